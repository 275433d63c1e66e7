"""The synthetic task: held-out scenes never trained on, answers uniform given the question (so a
text-only model is at chance), prompts and captions tokenise to what the models read."""

import collections

from hybridlm.multimodal import shapes
from hybridlm.multimodal.config import VisionConfig


def test_held_out_scenes_never_appear_in_training():
    train, val = shapes.ShapesTask("train"), shapes.ShapesTask("val")
    seen = {train.example(i).key() for i in range(3000)}
    held = {val.example(i).key() for i in range(400)}
    assert held and not seen & held


def test_answers_are_uniform_given_the_question_words():
    task = shapes.ShapesTask("train")
    by_question = collections.defaultdict(collections.Counter)
    for i in range(6000):
        ex = task.example(i)
        by_question[ex.question][ex.answer] += 1
    for question, answers in by_question.items():
        if sum(answers.values()) >= 150:
            top = max(answers.values()) / sum(answers.values())
            assert top < 1 / len(answers) + 0.12, (question, answers)  # no answer dominates any question


def test_batch_layout_and_tokenizer_agree():
    task = shapes.ShapesTask("val")
    batch = task.batch(0, 4, VisionConfig(mean=(0.5,) * 3, std=(0.5,) * 3))
    tok = shapes.tokenizer()
    assert batch.ids.shape == (4, 9) and batch.pixels.shape == (4, 3, 32, 32)
    for row, ex in zip(batch.ids.tolist(), batch.examples):
        assert row[0] == shapes.IMAGE and row[-1] == shapes.EOS
        assert tok.decode(row[1:7]) == ex.question and row[shapes.ShapesBatch.ANSWER_AT] == shapes.VOCAB[ex.answer]
    assert tok.encode("<image>\n" + batch.examples[0].question) == batch.ids[0, :7].tolist()


def test_pictures_show_the_scene():
    ex = shapes.Example((shapes.Thing("square", "red", 0), shapes.Thing("circle", "blue", 3)), "q", "a",
                        ((0, 0), (0, 0)))
    image = shapes.draw(ex, 32)
    assert image.getpixel((5, 5)) == shapes.COLORS["red"]  # inside the top-left square
    assert image.getpixel((21, 21)) == shapes.COLORS["blue"]  # the bottom-right circle's centre
    assert image.getpixel((21, 5)) == (0, 0, 0)  # the empty top-right cell
    assert shapes.caption(ex) == "red square left and blue circle right"

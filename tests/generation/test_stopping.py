from hybridlm.generation.stopping import StopWatcher, find_stop, tokens_before

# a toy vocabulary whose tokens have different lengths
PIECES = ["a", "b", "\n", "cd", "\n\nx", "END", "E", "ND"]


def decode(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids)


def test_find_stop_returns_the_earliest_occurrence_of_any_stop():
    assert find_stop("hello END world\n\n", ["\n\n", "END"]) == 6
    assert find_stop("hello", ["\n\n", "END"]) is None
    assert find_stop("abcabc", ["c", "bc"]) == 1


def test_tokens_before_drops_a_token_that_straddles_the_cut():
    ids = [0, 3, 4, 1]  # "a" "cd" "\n\nx" "b": the stop "\n\n" starts inside token 2
    text = decode(ids)
    cut = text.find("\n\n")
    assert tokens_before(ids, decode, cut) == [0, 3]
    assert tokens_before(ids, decode, len(text)) == ids
    assert tokens_before(ids, decode, 0) == []


def test_watcher_finds_a_stop_string_spanning_tokens():
    watcher = StopWatcher(["END"], decode)
    ids = [0, 1]
    assert watcher.check(ids) is None
    ids.append(6)  # "abE": not yet
    assert watcher.check(ids) is None
    ids.append(7)  # "abEND"
    assert watcher.check(ids) == ([0, 1], "ab")


def test_watcher_cuts_text_exactly_and_tokens_whole():
    watcher = StopWatcher(["\n\n"], decode)
    tokens, text = watcher.check([3, 0, 4])  # "cda\n\nx"
    assert text == "cda" and tokens == [3, 0]
    tokens, text = watcher.check([3, 2, 2, 0])  # "cd\n\na": the stop spans two single-newline tokens
    assert text == "cd" and tokens == [3]

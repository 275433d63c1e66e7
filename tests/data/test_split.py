from hybridlm.data.documents import Document
from hybridlm.data.split import split_documents


def test_split_is_by_document_per_source_and_seeded():
    docs = [Document(f"p{i}", "prose", f"p{i}") for i in range(20)] + [Document("c", "code", "c0")] + \
           [Document(f"w{i}", "web", f"w{i}") for i in range(3)]
    train, val, report = split_documents(docs, 0.1, seed=1)
    assert {d.origin for d in train} | {d.origin for d in val} == {d.origin for d in docs}
    assert not {d.origin for d in train} & {d.origin for d in val}
    assert report.info["val_by_source"] == {"code": 0, "prose": 2, "web": 1}  # at least one, never all
    again = split_documents(docs, 0.1, seed=1)[1]
    assert [d.origin for d in again] == [d.origin for d in val]
    assert [d.origin for d in split_documents(docs, 0.1, seed=2)[1]] != [d.origin for d in val]
    assert split_documents(docs, 0.0)[1] == []

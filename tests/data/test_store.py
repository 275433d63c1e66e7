"""The spill stores: documents and token ids written to disk and read back by index."""

import numpy as np
import pytest

from hybridlm.data.store import IdStore


def test_id_store_reads_back_each_document_by_index(tmp_path):
    store = IdStore(tmp_path / "ids.u32")
    arrays = {0: np.array([5, 6, 7]), 3: np.array([], dtype=np.int64), 4: np.array([2**31 + 1]), 9: np.arange(40)}
    for index, ids in arrays.items():  # gaps: documents 1, 2, 5-8 were never stored
        store.append(index, ids)
    for index in (9, 0, 4, 3):
        assert store[index].tolist() == arrays[index].tolist()
        assert store[index].dtype == np.uint32
    for missing in (1, 5, 10, -1):
        with pytest.raises(KeyError):
            store[missing]
    store.close()


def test_id_store_takes_documents_in_increasing_index_order(tmp_path):
    store = IdStore(tmp_path / "ids.u32")
    store.append(2, np.array([1]))
    with pytest.raises(ValueError, match="increasing index order"):
        store.append(2, np.array([1]))
    store.close()

from batchnlp.cluster import local_layout


def test_local_layout_never_oversubscribes_cores_or_memory():
    gib = 2**30
    assert local_layout(None, cores=8, memory=64 * gib) == (8, 1)
    assert local_layout(None, cores=8, memory=4 * gib) == (2, 4)
    assert local_layout(None, cores=2, memory=gib // 2) == (1, 2)
    assert local_layout(3, cores=8, memory=64 * gib) == (3, 2)

"""faiss k-means, embedding input and decontamination on real MiniLM embeddings of the shared datasets."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _embedded_corpus import corpus, model_or_skip
from packwise.selection import KMeans, decontaminate, kmeans
from packwise.selection.cluster import num_gpus
from packwise.selection.embed import EmbeddingWriter, column_embeddings, embed_texts, iter_column_embeddings


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return corpus().embeddings


def test_assignment_is_brute_force_nearest_centroid(x):
    km = kmeans(x, 6, seed=1)
    labels, dist = km.assign(x, batch_size=50)
    d2 = ((x[:, None, :] - km.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, d2.argmin(1))
    np.testing.assert_allclose(dist, d2.min(1), atol=1e-5)
    assert labels.dtype == np.int64 and dist.dtype == np.float32
    assert sorted(np.unique(labels).tolist()) == list(range(6))


def test_spherical_assignment_is_max_cosine(x):
    km = kmeans(x, 5, spherical=True, seed=2)
    np.testing.assert_allclose(np.linalg.norm(km.centroids, axis=1), 1.0, atol=1e-5)
    labels, dist = km.assign(x * 3.0)  # scale does not matter for cosine
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ km.centroids.T
    np.testing.assert_array_equal(labels, cos.argmax(1))
    np.testing.assert_allclose(dist, 1.0 - cos.max(1), atol=1e-5)


def test_clusters_follow_ag_news_topics(x, shared_data):
    """Real structure: spherical k-means on 160 ag_news rows recovers their 4 topic labels well above chance."""
    import csv

    with open(shared_data / "ag_news_test.csv", encoding="utf-8", newline="") as f:
        topic = np.array([int(row[0]) for row in csv.reader(f)][:160])
    for seed in range(4):
        labels, _ = kmeans(x[:160], 4, spherical=True, seed=seed).assign(x[:160])
        purity = sum(np.bincount(topic[labels == c]).max() for c in range(4)) / 160
        assert purity > 0.5  # the largest topic alone is 50/160 = 0.31


def test_seeded_and_explicit_sample(x):
    a = kmeans(x, 4, seed=7, max_points_per_centroid=10)
    b = kmeans(x, 4, seed=7, max_points_per_centroid=10)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.report.rows == x.shape[0] and a.report.train_rows == 40 and a.report.sampled
    obj = np.array(a.report.objective)  # faiss stops early once the objective no longer moves
    assert a.report.niter == 20 and 1 <= len(obj) <= 20 and (np.diff(obj) <= 1e-4).all() and not a.report.gpu
    full = kmeans(x, 4, seed=7, max_points_per_centroid=1000)
    assert full.report.train_rows == x.shape[0] and not full.report.sampled
    # the reported sample is exactly what faiss trained on: no second, silent subsample
    import faiss

    rows = np.sort(np.random.default_rng(7).choice(x.shape[0], 40, replace=False))
    assert a.report.init == "afkmc2"
    ref = faiss.Kmeans(x.shape[1], 4, niter=20, seed=7, max_points_per_centroid=2**31 - 1, min_points_per_centroid=1, init_method=2)
    ref.train(np.ascontiguousarray(x[rows]))
    np.testing.assert_array_equal(a.centroids, ref.centroids)


def test_memmap_input_and_save_load(x, tmp_path):
    path = tmp_path / "emb.npy"
    w = EmbeddingWriter(path, x.shape[0], x.shape[1])
    for lo in range(0, x.shape[0], 100):
        w.write(x[lo : lo + 100])
    mm = w.close()
    assert isinstance(mm, np.memmap) and not (tmp_path / ".emb.npy.tmp").exists()
    km = kmeans(mm, 5, spherical=True, seed=4)
    labels, dist = km.assign(mm, batch_size=64)
    km.save(tmp_path / "km")
    assert sorted(p.name for p in (tmp_path / "km").iterdir()) == ["centroids.npy", "index.faiss", "kmeans.json", "timings.json"]
    assert "seconds" not in (tmp_path / "km" / "kmeans.json").read_text()  # timings live in timings.json only
    again = KMeans.load(tmp_path / "km")
    assert again.spherical and again.report.train_rows == x.shape[0]
    assert again.report.seconds == round(km.report.seconds, 3)
    l2, d2 = again.assign(x)
    np.testing.assert_array_equal(l2, labels)
    np.testing.assert_array_equal(d2, dist)  # exact assignment: the same bits after a reload
    with pytest.raises(ValueError, match="missing centroids.npy, kmeans.json; point at a folder written by KMeans.save"):
        KMeans.load(tmp_path)


@pytest.mark.parametrize("factory,nprobe", [("HNSW32", 1), ("IVF4,Flat", 4)])
def test_index_factory_coarse_quantizers(x, factory, nprobe):
    flat = kmeans(x, 8, spherical=True, seed=5)
    other = kmeans(x, 8, spherical=True, seed=5, index_factory=factory, nprobe=nprobe)
    np.testing.assert_array_equal(flat.centroids, other.centroids)
    np.testing.assert_array_equal(other.assign(x)[0], flat.assign(x)[0])


def test_bad_inputs(x):
    with pytest.raises(ValueError, match="k=300 is larger than the 256 rows; pass k <= 256"):
        kmeans(x, 300)
    with pytest.raises(ValueError, match="init='forgy': use one of random, kmeans\\+\\+, afkmc2"):
        kmeans(x, 4, init="forgy")
    with pytest.raises(ValueError, match="k=0: need a positive integer"):
        kmeans(x, 0)
    bad = x.copy()
    bad[17, 3] = np.nan
    with pytest.raises(ValueError, match="embeddings: row 17 has a NaN or infinite value"):
        kmeans(bad, 4)
    km = kmeans(x, 4, seed=0)
    with pytest.raises(ValueError, match="embeddings: row 17 has a NaN"):
        km.assign(bad, batch_size=10)
    with pytest.raises(ValueError, match="vectors have 100 dims but the clusters have 384"):
        km.assign(x[:, :100])
    with pytest.raises(ValueError, match="expected a 2-D array"):
        kmeans(x[0], 1)
    with pytest.raises(ValueError, match="expected float vectors, got dtype int64"):
        kmeans(np.ones((5, 2), np.int64), 1)
    with pytest.raises(ValueError, match="index_factory='Bogus': faiss cannot build it"):
        kmeans(x, 4, index_factory="Bogus").assign(x)
    if num_gpus() == 0:
        with pytest.raises(ValueError, match="gpu=True but faiss sees no GPU"):
            kmeans(x, 4, gpu=True)


@pytest.mark.gpu
@pytest.mark.skipif(num_gpus() == 0, reason="faiss sees no GPU (faiss-cpu or no CUDA device)")
def test_gpu_matches_cpu_assignment(x):
    km = kmeans(x, 6, seed=1, gpu=True)
    assert km.report.gpu
    d2 = ((x[:, None, :] - km.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(km.assign(x)[0], d2.argmin(1))


def test_vector_column_from_parquet(x, tmp_path):
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"id": np.arange(x.shape[0]), "emb": pa.array(list(x), pa.list_(pa.float32()))}), path, row_group_size=64)
    got = column_embeddings(pq.ParquetFile(path).iter_batches(batch_size=50), "emb")
    np.testing.assert_array_equal(got, x)
    fixed = pa.table({"emb": pa.FixedSizeListArray.from_arrays(pa.array(x[:3].ravel()), 384)})
    np.testing.assert_array_equal(column_embeddings(fixed, "emb"), x[:3])
    assert [b.shape for b in iter_column_embeddings(pq.ParquetFile(path).iter_batches(batch_size=100), "emb")] == [(100, 384), (100, 384), (56, 384)]


def test_vector_column_errors():
    ragged = pa.table({"emb": pa.array([[1.0, 2.0], [1.0, 2.0], [3.0]], pa.list_(pa.float32()))})
    with pytest.raises(ValueError, match="column 'emb': row 2 has 1 values but earlier rows have 2"):
        column_embeddings(ragged, "emb")
    batches = [pa.record_batch({"emb": pa.array([[1.0, 2.0]] * 3)}), pa.record_batch({"emb": pa.array([[1.0, 2.0], [1.0, float("nan")]])})]
    with pytest.raises(ValueError, match="column 'emb': row 4 has a NaN"):
        column_embeddings(batches, "emb")
    with pytest.raises(ValueError, match="column 'emb': row 1 is null"):
        column_embeddings(pa.table({"emb": pa.array([[1.0], None])}), "emb")
    with pytest.raises(ValueError, match="column 'vec' not found; the input has emb, text; pass --embeddings-column"):
        column_embeddings(pa.table({"emb": pa.array([[1.0]]), "text": ["a"]}), "vec")
    with pytest.raises(ValueError, match="type string is not a list of floats"):
        column_embeddings(pa.table({"emb": ["a"]}), "emb")


def test_embed_texts_streams_to_memmap(tmp_path):
    c = corpus()
    model = model_or_skip()
    chunks = [c.texts[0:3], c.texts[200:202]]
    seen = []
    mm = embed_texts(model, chunks, tmp_path / "e.npy", rows=5, progress=seen.append)
    assert mm.shape == (5, 384) and seen == [3, 2]
    np.testing.assert_allclose(mm, c.embeddings[[0, 1, 2, 200, 201]], atol=2e-5)
    with pytest.raises(ValueError, match="text: row 4 is NoneType, not a string"):
        embed_texts(model, [c.texts[0:3], [c.texts[5], None]], tmp_path / "f.npy", rows=5)
    with pytest.raises(ValueError, match="3 of 5 rows written; the input ended early"):
        embed_texts(model, [c.texts[0:3]], tmp_path / "g.npy", rows=5)
    assert not (tmp_path / "g.npy").exists()


def test_decontaminate_catches_paraphrases(x):
    c = corpus()
    base = x[: c.num_base]
    changed = [i for i, j in c.near.items() if c.texts[i].strip() != c.texts[j].strip() and "  " not in c.texts[i]]
    eval_set = x[changed]  # one-word paraphrases of 6 training rows
    r = decontaminate(base, eval_set, threshold=0.95, batch_size=40)
    assert [m[:2] for m in sorted(r.matches())] == sorted((c.near[i], k) for k, i in enumerate(changed))
    assert all(s > 0.95 for _, _, s in r.matches())
    assert r.keep_rows().shape[0] == c.num_base - len(changed)
    xn = base / np.linalg.norm(base, axis=1, keepdims=True)
    en = eval_set / np.linalg.norm(eval_set, axis=1, keepdims=True)
    sims = xn @ en.T
    np.testing.assert_array_equal(r.eval_index, sims.argmax(1))
    np.testing.assert_array_equal(decontaminate(base, eval_set, threshold=0.5).flagged, sims.max(1) > 0.5)
    with pytest.raises(ValueError, match="eval embeddings: vectors have 10 dims but the clusters have 384"):
        decontaminate(base, eval_set[:, :10])

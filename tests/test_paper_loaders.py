"""Loaders of the paper's benchmarks, on small fixture files written by the tests.

No benchmark ships offline, so every file here is written into ``tmp_path`` in the published
format; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ood_zoo.data import (
    CLINC_DOMAINS,
    CLINC_PARAPHRASES,
    DatasetFilesError,
    banking77,
    clinc150,
    clinc150_domain,
    clinc_heldout_intents,
    imdb,
    load_dataset,
    mnli,
    multi30k,
    newsgroups20,
    rte,
    sst2,
    standard_splits,
    trec,
    wmt16,
)
from ood_zoo.data.benchmarks import DATA_ENV

# ---------------------------------------------------------------------------- CLINC150

#: paper.md §1: the held-out OOD intents per seed, recomputed with the official code's RNG calls.
PAPER_HELD_OUT = {
    "banking": {
        1: "account_blocked balance bill_balance freeze_account money_transfer report_fraud "
           "spending_history",
        2: "bill_balance interest_rate min_payment pin_change report_fraud spending_history "
           "transactions",
        3: "bill_balance due_bill freeze_account money_transfer order_checks report_fraud "
           "transactions",
        4: "account_blocked bill_balance min_payment order_checks report_fraud routing "
           "transactions",
        5: "bill_balance due_bill freeze_account interest_rate money_transfer spending_history "
           "transactions",
    },
    "travel": {
        1: "alert_of_travel book_flight plug_type rent_car reserve_hotel timezone vaccines",
        2: "alert_of_travel carry_on exchange_rate rent_car reserve_hotel suggestion_of_travel "
           "translate",
        3: "alert_of_travel carry_on flight_status lost_luggage plug_type rent_car vaccines",
        4: "alert_of_travel carry_on lost_luggage notification_of_travel rent_car "
           "suggestion_of_travel timezone",
        5: "alert_of_travel carry_on exchange_rate flight_status plug_type reserve_hotel "
           "vaccines",
    },
}
ORIGINAL_NAME = {new: old for old, new in CLINC_PARAPHRASES.items()}
PER_INTENT = {"train": 100, "val": 20, "test": 30}
OTHER_INTENTS = ("weather", "alarm")


def write_clinc(root: Path) -> Path:
    """A data_full.json with CLINC's per-intent counts for the 30 intents the paper uses."""
    intents = [ORIGINAL_NAME.get(y, y) for d in ("banking", "travel") for y in CLINC_DOMAINS[d]]
    intents += list(OTHER_INTENTS)
    data = {
        split: [[f"{split} {intent} utterance {i}", intent] for intent in intents
                for i in range(n)]
        for split, n in PER_INTENT.items()
    }
    for split in PER_INTENT:
        data[f"oos_{split}"] = [[f"{split} out of scope {i}", "oos"] for i in range(5)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "data_full.json").write_text(json.dumps(data), encoding="utf-8")
    return root


@pytest.mark.parametrize("domain", ["banking", "travel"])
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_clinc_held_out_intents_match_the_paper(domain, seed):
    known, held_out = clinc_heldout_intents(domain, seed)
    assert sorted(held_out) == PAPER_HELD_OUT[domain][seed].split()
    assert len(known) == 8
    assert len(held_out) == 7
    assert set(known) | set(held_out) == set(CLINC_DOMAINS[domain])
    # the official code's calls, literally: global seed, then choice(labels, 8, replace=False)
    state = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(seed)  # noqa: NPY002
        labels = np.array(CLINC_DOMAINS[domain])
        paper_known = list(np.random.choice(labels, 8, replace=False))  # noqa: NPY002
    finally:
        np.random.set_state(state)  # noqa: NPY002
    assert known == paper_known  # same intents, same (label index) order


def test_clinc_split_leaves_the_global_rng_alone():
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    clinc_heldout_intents("banking", 3)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # noqa: NPY002
    with pytest.raises(ValueError, match="unknown CLINC domain"):
        clinc_heldout_intents("kitchen", 1)


def test_clinc150_full_split(tmp_path):
    root = write_clinc(tmp_path / "clinc")
    data = clinc150(root)
    assert list(data) == ["train", "validation", "test"]
    n_intents = 30 + len(OTHER_INTENTS)
    assert [len(data[s]) for s in data] == [100 * n_intents, 20 * n_intents, 30 * n_intents]
    names = data["train"].label_names
    assert names == tuple(sorted(names))
    assert "money_transfer" in names
    assert "transfer" not in names
    assert data["test"].counts()["rent_car"] == 30
    assert data["train"].texts[0] == data["train"].texts[0].strip()
    assert "CC BY" in data["train"].license
    raw = clinc150(root / "data_full.json", paraphrase=False, oos=True)
    assert "transfer" in raw["train"].label_names
    assert len(raw["oos_test"]) == 5
    assert raw["oos_test"].labels is None


@pytest.mark.parametrize("domain", ["banking", "travel"])
def test_clinc150_domain_split_counts(tmp_path, domain):
    root = write_clinc(tmp_path / "clinc")
    for seed in (1, 4):
        out = clinc150_domain(root, domain=domain, seed=seed)
        assert list(out) == ["train", "validation", "test", "ood_test"]
        assert [len(out[s]) for s in out] == [800, 160, 240, 210]
        known, held_out = clinc_heldout_intents(domain, seed)
        assert out["train"].label_names == tuple(known)
        assert out["validation"].counts() == dict.fromkeys(known, 20)
        assert sorted(out["ood_test"].label_names) == PAPER_HELD_OUT[domain][seed].split()
        assert all(t.startswith("test ") for t in out["ood_test"].texts)
        intents = {t.split()[1] for t in out["ood_test"].texts}
        assert intents == {ORIGINAL_NAME.get(y, y) for y in held_out}
        for text, label in zip(out["test"].texts, out["test"].labels, strict=True):
            assert CLINC_PARAPHRASES.get(text.split()[1], text.split()[1]) == known[label]


def test_clinc_through_the_registry_and_standard_splits(tmp_path):
    root = write_clinc(tmp_path / "clinc")
    by_name = load_dataset("clinc150_travel", root=root, seed=2)
    assert sorted(by_name["ood_test"].label_names) == PAPER_HELD_OUT["travel"][2].split()
    splits = standard_splits("clinc150_banking", seed=3, root=root)  # the seed picks the intents
    assert sorted(splits["ood_test"].label_names) == PAPER_HELD_OUT["banking"][3].split()
    few = standard_splits("clinc150_banking", seed=3, root=root, shot=5)
    assert len(few["train"]) == len(few["validation"]) == 40
    assert len(few["test"]) == 240
    assert len(few["ood_test"]) == 210


def test_clinc_reads_the_paper_tsv_files(tmp_path):
    root = tmp_path / "clinc_full"
    root.mkdir()
    for file, n in (("train_para.tsv", 4), ("valid_para.tsv", 2), ("test_para.tsv", 3)):
        rows = ["text\tlabel"] + [f"{file} {y} {i}\t{y}" for y in CLINC_DOMAINS["banking"]
                                  for i in range(n)] + ["is this out of scope\toos"]
        (root / file).write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = clinc150_domain(root, domain="banking", seed=1)
    assert [len(out[s]) for s in out] == [32, 16, 24, 21]


def test_clinc_missing_files_name_them(tmp_path, monkeypatch):
    with pytest.raises(DatasetFilesError, match=r"data_full\.json"):
        clinc150(tmp_path)
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(DatasetFilesError, match=DATA_ENV):
        clinc150()
    write_clinc(tmp_path / "clinc150")
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert len(clinc150()["validation"]) == 20 * 32
    assert issubclass(DatasetFilesError, FileNotFoundError)


# ---------------------------------------------------------------------------- other benchmarks


def test_banking77_csv(tmp_path):
    (tmp_path / "train.csv").write_text(
        'text,category\nI am still waiting on my card?,card_arrival\n'
        '"How do I top up, quickly?",top_up_failed\nWhat is the exchange rate,exchange_rate\n',
        encoding="utf-8",
    )
    (tmp_path / "test.csv").write_text(
        "text,category\nHow do I locate my card?,card_arrival\n", encoding="utf-8"
    )
    data = banking77(tmp_path)
    assert list(data) == ["train", "test"]
    assert data["train"].label_names == ("card_arrival", "exchange_rate", "top_up_failed")
    assert data["train"].texts[1] == "How do I top up, quickly?"
    assert data["test"].counts()["card_arrival"] == 1
    splits = standard_splits("banking77", root=tmp_path, seed=0, validation_fraction=0.34)
    assert len(splits["train"]) + len(splits["validation"]) == 3
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.csv").write_text("sentence,label\nx,y\n", encoding="utf-8")
    with pytest.raises(DatasetFilesError, match="text,category"):
        banking77(tmp_path / "bad")
    with pytest.raises(DatasetFilesError, match=r"train\.csv and test\.csv"):
        banking77(tmp_path / "nowhere")


def test_sst2_glue_tsv_and_paper_test(tmp_path):
    (tmp_path / "train.tsv").write_text(
        'sentence\tlabel\nhide new secretions from the parental units \t0\n'
        'contains no wit , only labored gags \t0\nthe "greatest" film \t1\n', encoding="utf-8"
    )
    (tmp_path / "dev.tsv").write_text(
        "sentence\tlabel\nit 's a charming and often affecting journey . \t1\n", encoding="utf-8"
    )
    (tmp_path / "test.tsv").write_text("index\tsentence\n0\tunlabelled\n", encoding="utf-8")
    (tmp_path / "test.data").write_text(
        "0 no movement , no yuks , not much of anything .\n1 a gorgeous , witty film .\n",
        encoding="utf-8",
    )
    data = sst2(tmp_path)
    assert list(data) == ["train", "validation", "test"]
    assert data["train"].label_names == ("negative", "positive")
    assert data["train"].labels.tolist() == [0, 0, 1]
    assert data["train"].texts[2] == 'the "greatest" film'  # quotes kept: tabs only
    assert data["test"].texts == ["no movement , no yuks , not much of anything .",
                                  "a gorgeous , witty film ."]
    assert data["test"].labels.tolist() == [0, 1]
    with pytest.raises(DatasetFilesError, match=r"dev\.tsv"):
        sst2(tmp_path / "nowhere")


def test_20newsgroups_bydate_tree(tmp_path):
    posts = {
        ("train", "sci.space", "60"): "From: a@b\nSubject: orbit\n\nThe shuttle launched.",
        ("train", "sci.space", "7"): "From: c@d\nSubject: moon\n\nApollo \xe9t\xe9.",
        ("train", "rec.autos", "101"): "From: e@f\nSubject: cars\n\nV8 engines.",
        ("test", "rec.autos", "5"): "From: g@h\nSubject: oil\n\nChange it.",
    }
    for (split, group, name), text in posts.items():
        folder = tmp_path / f"20news-bydate-{split}" / group
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(text.encode("latin-1"))
    data = newsgroups20(tmp_path)
    assert list(data) == ["train", "test"]
    assert data["train"].label_names == ("rec.autos", "sci.space")
    assert data["train"].labels.tolist() == [0, 1, 1]
    assert "Apollo été" in data["train"].texts[1]  # numeric order: 7 before 60, latin-1
    assert data["test"].counts() == {"rec.autos": 1, "sci.space": 0}
    bare = newsgroups20(tmp_path, remove_headers=True)
    assert bare["train"].texts[0] == "V8 engines."
    with pytest.raises(DatasetFilesError, match="20news-bydate-train"):
        newsgroups20(tmp_path / "nowhere")


def test_trec_label_files(tmp_path):
    (tmp_path / "train_5500.label").write_bytes(
        b"DESC:manner How did serfdom develop in and then leave Russia ?\n"
        b"ENTY:cremat What films featured the character Popeye Doyle ?\n"
        b"HUM:ind Who was Caf\xe9 Society 's host ?\n"
    )
    (tmp_path / "TREC_10.label").write_bytes(b"NUM:dist How far is it from Denver to Aspen ?\n")
    data = trec(tmp_path)
    assert data["train"].label_names == ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")
    assert data["train"].labels.tolist() == [2, 1, 3]
    assert data["train"].texts[0] == "How did serfdom develop in and then leave Russia ?"
    assert "Café" in data["train"].texts[2]
    assert data["test"].labels.tolist() == [5]
    fine = trec(tmp_path, label="fine")
    assert fine["test"].label_names[fine["test"].labels[0]] == "NUM:dist"
    (tmp_path / "TREC_10.label").write_text("not a trec line\n", encoding="utf-8")
    with pytest.raises(DatasetFilesError, match="COARSE:fine"):
        trec(tmp_path)


MNLI_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
               "sentence1_parse\tsentence2_parse\tsentence1\tsentence2")


def mnli_row(i: int, premise: str, hypothesis: str, label: str | None) -> str:
    cells = [str(i), "1", f"{i}e", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)",
             premise, hypothesis]
    return "\t".join(cells + ([label, label] if label else []))


def test_mnli_glue_tsv(tmp_path):
    labelled = MNLI_HEADER + "\tlabel1\tgold_label\n"
    (tmp_path / "dev_matched.tsv").write_text(
        labelled + mnli_row(0, "The cat sat.", "A cat sat.", "entailment") + "\n"
        + mnli_row(1, "He left.", "He stayed.", "contradiction") + "\n"
        + mnli_row(2, "Unsure.", "No gold.", None) + "\t-\t-\n", encoding="utf-8"
    )
    (tmp_path / "dev_mismatched.tsv").write_text(
        labelled + mnli_row(3, "It rained.", "It was wet.", "neutral") + "\n", encoding="utf-8"
    )
    (tmp_path / "test_matched.tsv").write_text(
        MNLI_HEADER + "\n" + mnli_row(4, 'She said "hi".', "She spoke.", None) + "\n",
        encoding="utf-8",
    )
    (tmp_path / "test_mismatched.tsv").write_text(
        MNLI_HEADER + "\n" + mnli_row(5, "Dogs bark.", "Cats meow.", None) + "\n",
        encoding="utf-8",
    )
    data = mnli(tmp_path)
    assert list(data) == ["validation", "test"]
    assert data["validation"].texts == ["The cat sat. A cat sat.", "He left. He stayed.",
                                        "It rained. It was wet."]
    assert data["validation"].labels.tolist() == [0, 2, 1]
    assert data["validation"].label_names == ("entailment", "neutral", "contradiction")
    assert data["test"].texts == ['She said "hi". She spoke.', "Dogs bark. Cats meow."]
    assert data["test"].labels is None
    assert mnli(tmp_path, text="premise")["test"].texts == ['She said "hi".', "Dogs bark."]
    assert mnli(tmp_path, text="hypothesis")["test"].texts == ["She spoke.", "Cats meow."]
    with pytest.raises(ValueError, match="text must be"):
        mnli(tmp_path, text="both")
    with pytest.raises(DatasetFilesError, match="test_matched"):
        mnli(tmp_path / "nowhere")


def test_rte_glue_tsv(tmp_path):
    (tmp_path / "dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\tNo weapons found.\tWeapons found.\t"
        "not_entailment\n1\tParis is in France.\tParis is French.\tentailment\n",
        encoding="utf-8",
    )
    (tmp_path / "test.tsv").write_text(
        "index\tsentence1\tsentence2\n0\tMars is red.\tMars has a colour.\n", encoding="utf-8"
    )
    data = rte(tmp_path)
    assert data["validation"].labels.tolist() == [1, 0]
    assert data["validation"].label_names == ("entailment", "not_entailment")
    assert data["test"].texts == ["Mars is red. Mars has a colour."]
    assert data["test"].labels is None
    assert rte(tmp_path, text="premise")["test"].texts == ["Mars is red."]


def test_wmt16_plain_text_directory_and_sgm(tmp_path):
    lines = ["Obama receives Netanyahu", "", "The relationship is famously bad.",
             "The relationship is famously bad."]
    (tmp_path / "test.en").write_text("\n".join(lines) + "\n", encoding="utf-8")
    from_dir = wmt16(tmp_path)
    assert from_dir.texts == ["Obama receives Netanyahu", "The relationship is famously bad.",
                              "The relationship is famously bad."]
    assert from_dir.labels is None
    assert wmt16(tmp_path / "test.en").texts == from_dir.texts  # a file path works too
    assert len(wmt16(tmp_path, dedupe=True)) == 2
    sgm_dir = tmp_path / "sgm"
    sgm_dir.mkdir()
    (sgm_dir / "newstest2016-deen-ref.en.sgm").write_text(
        '<refset>\n<doc docid="x">\n<p>\n<seg id="1">First sentence.</seg>\n'
        '<seg id="2">Second one.</seg>\n</p>\n</doc>\n</refset>\n', encoding="utf-8"
    )
    assert wmt16(sgm_dir).texts == ["First sentence.", "Second one."]
    with pytest.raises(DatasetFilesError, match=r"test\.en"):
        wmt16(tmp_path / "nowhere")


def test_multi30k_union_of_test_files(tmp_path):
    counts = {"test_2016_flickr.en": 3, "test_2017_mscoco.en": 2, "test_2018_flickr.en": 4}
    for name, n in counts.items():
        text = "\n".join(f"A dog runs ({name}, {i})." for i in range(n)) + "\n\n"
        (tmp_path / name).write_text(text, encoding="utf-8")
    data = multi30k(tmp_path)
    assert len(data) == 9
    assert data.domain_names == tuple(counts)
    assert data.domain_counts() == counts
    assert data.texts[0] == "A dog runs (test_2016_flickr.en, 0)."
    assert len(multi30k(tmp_path / "test_2017_mscoco.en")) == 2
    with pytest.raises(DatasetFilesError, match="test_2016_flickr"):
        multi30k(tmp_path / "nowhere")


def test_imdb_tree(tmp_path):
    reviews = {
        ("train", "pos", "10_9"): "Great film.<br /><br />Loved it.",
        ("train", "pos", "2_8"): "Fine acting.",
        ("train", "neg", "0_3"): "Dull.",
        ("test", "neg", "1_1"): "Awful.",
        ("train", "unsup", "0_0"): "ignored",
    }
    for (split, folder, name), text in reviews.items():
        d = tmp_path / "aclImdb" / split / folder
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.txt").write_text(text, encoding="utf-8")
    data = imdb(tmp_path)
    assert list(data) == ["train", "test"]
    assert data["train"].texts == ["Dull.", "Fine acting.", "Great film.<br /><br />Loved it."]
    assert data["train"].labels.tolist() == [0, 1, 1]
    assert data["train"].label_names == ("negative", "positive")
    assert imdb(tmp_path / "aclImdb")["test"].texts == ["Awful."]
    assert imdb(tmp_path, clean_html=True)["train"].texts[2] == "Great film.  Loved it."
    with pytest.raises(DatasetFilesError, match="aclImdb"):
        imdb(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("name", "expected"),
    [("clinc150", "data_full.json"), ("banking77", "train.csv"), ("sst2", "dev.tsv"),
     ("20newsgroups", "20news-bydate"), ("trec", "TREC_10.label"), ("mnli", "test_matched"),
     ("rte", "test.tsv"), ("wmt16", "test.en"), ("multi30k", "test_2016_flickr.en"),
     ("imdb", "aclImdb"), ("clinc150_banking", "data_full.json")],
)
def test_every_loader_names_its_files_when_missing(tmp_path, name, expected):
    with pytest.raises(DatasetFilesError, match=expected.replace(".", r"\.")):
        load_dataset(name, root=tmp_path / "empty")

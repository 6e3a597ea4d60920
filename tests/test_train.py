"""What a training job reads once for a teacher and its model (train/driver.py): the labelled rows
split, the unlabelled ones, the vocabulary of both, every text encoded. The default model's
two-stage job on 2 Train workers is test_walkthrough.py's quick-start test; `train --teacher` and
`--init-from` are test_pretrain.py's; a worker lost with its node, and the run resumed from its
checkpoint, is test_multinode.py's."""

import pandas as pd

from ray_sentiment.settings import TrainSettings
from ray_sentiment.text.tokens import tokenize
from ray_sentiment.train.checks import check_train
from ray_sentiment.train.driver import read_inputs

from conftest import dataset

ROWS, UNLABELLED = 600, 400


def test_the_vocabulary_and_the_encoded_texts_come_from_the_labelled_and_the_unlabelled_rows(ray_local, tmp_path):
    labelled, unlabelled = tmp_path / "labelled.parquet", tmp_path / "unlabelled.parquet"
    rows = pd.read_parquet(dataset("tweets/train.parquet")).sample(n=ROWS, random_state=0)[["text", "label"]]
    rows.to_parquet(labelled)
    extra = pd.read_parquet(dataset("unlabeled/tweets.parquet")).head(UNLABELLED)
    extra.to_parquet(unlabelled)
    settings = TrainSettings(
        train_path=str(labelled), output=str(tmp_path / "b"), preset="default", unlabelled_path=str(unlabelled)
    )
    r, encoder = check_train(settings)
    inputs = read_inputs(settings, r, encoder)

    counts = inputs.data.counts
    assert counts["train"]["read"] == ROWS and counts["unlabelled"] == {"read": UNLABELLED, "dropped": 0}
    assert counts["train"]["rows"] + counts["val"]["rows"] == ROWS - counts["train"]["dropped"]
    labelled_tokens = set(tokenize(rows["text"].tolist()).flatten().to_pylist())
    unlabelled_tokens = set(tokenize(extra["text"].tolist()).flatten().to_pylist())
    # Fewer distinct tokens than the vocabulary's 10,000: every one of both is in it, those of the
    # validation rows too (they are labelled texts the model never trains on, so not counted).
    assert len(inputs.vocab) < r.model.vocab_size
    assert unlabelled_tokens <= set(inputs.vocab)
    assert len(unlabelled_tokens - labelled_tokens) > 500

    # Encoded once, for the teacher and the model both: the training rows and the unlabelled ones.
    encoded = inputs.encoded(r.max_len)
    assert encoded.count() == counts["train"]["rows"] + UNLABELLED
    assert inputs.encoded(r.max_len) is encoded
    cooccurrence = inputs.cooccurrence(r.max_len)
    assert cooccurrence.shape == (len(inputs.vocab), len(inputs.vocab)) and cooccurrence.nnz > 0

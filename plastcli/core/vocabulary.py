"""The names a recipe may use and what they stand for: datasets, feedback modes,
initialisers, population grid keys (term names: :mod:`plastcli.core.terms`).

The bottom of the core layer, beside :mod:`plastcli.core.terms`: the network, the data
loader, the recipes and the store all take their names from here, so none of them
imports another for a name. Nothing here imports torch (recipe validation reads it).
"""

from __future__ import annotations

FEEDBACK_MODES = ("sym", "fixed", "direct", "plastic")
INITS = ("xavier", "naive")
# the recurrent net's (plastcli/core/rnn.py): sigma, and W_h's own initialisation
SIGMAS = ("softplus", "tanh")
RECURRENT_INITS = ("same", "xavier", "normal", "orthogonal", "identity")  # same = init

# name -> (input size, number of classes, split -> (images file, labels file)); the
# files are paths relative to the data dir (plastcli/SHA256SUMS lists their sums).
DATASETS: dict[str, tuple[int, int, dict[str, tuple[str, str]]]] = {
    "mnist": (784, 10, {
        "train": ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"),
        "test": ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"),
    }),
    "fashion-mnist": (784, 10, {
        "train": ("fashion-mnist/train-images-idx3-ubyte.gz",
                  "fashion-mnist/train-labels-idx1-ubyte.gz"),
        "test": ("fashion-mnist/t10k-images-idx3-ubyte.gz",
                 "fashion-mnist/t10k-labels-idx1-ubyte.gz"),
    }),
    "emnist-balanced": (784, 47, {
        "train": ("emnist/emnist-balanced-train-images-idx3-ubyte.gz",
                  "emnist/emnist-balanced-train-labels-idx1-ubyte.gz"),
        "test": ("emnist/emnist-balanced-test-images-idx3-ubyte.gz",
                 "emnist/emnist-balanced-test-labels-idx1-ubyte.gz"),
    }),
    "emnist-bymerge": (784, 47, {
        "test": ("emnist/emnist-bymerge-test-images-idx3-ubyte.gz",
                 "emnist/emnist-bymerge-test-labels-idx1-ubyte.gz"),
    }),
    "emnist-byclass": (784, 62, {
        "test": ("emnist/emnist-byclass-test-images-idx3-ubyte.gz",
                 "emnist/emnist-byclass-test-labels-idx1-ubyte.gz"),
    }),
}
# name -> split -> (images file, labels file): what plastcli.data reads and checks
REGISTRY: dict[str, dict[str, tuple[str, str]]] = {
    name: splits for name, (_, _, splits) in DATASETS.items()}

# Meta-hyperparameters a meta-train population may vary per member (population.grid).
GRID_KEYS = ("meta.l1", "meta.lr")
GRID_INIT_PREFIX = "rule.init."


def grid_dataset_name(key: str) -> str:
    """/members dataset of a grid key: 'meta.l1' -> 'l1', 'rule.init.oja' -> 'init_oja'."""
    return key.removeprefix("meta.").replace(GRID_INIT_PREFIX, "init_")

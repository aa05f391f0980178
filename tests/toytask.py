"""A tiny synthetic task for core tests: arithmetic progressions mod K (label = the step)."""
import torch

from catdiff.api.task import Task, TokenData

SMALL = dict(layers=2, heads=2, width=32, embed_dim=16, batch_size=16, steps=30, warmup=5,
             lr=1e-3, log_every=10, ckpt_every=10, sample_steps=8, n_samples=16, eval_batches=1)


def progressions(n: int, seq_len: int, vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(vocab, (n, 1), generator=g)
    step = torch.randint(1, 4, (n,), generator=g)
    tokens = (start + step[:, None] * torch.arange(seq_len)) % vocab
    return TokenData(tokens, step - 1)


class ToyTask(Task):
    name = "toy"
    vocab_size = 7
    seq_len = 12
    description = "arithmetic progressions mod 7 (tests)"
    defaults = SMALL

    def load(self, split):
        return progressions(256 if split == "train" else 64, self.seq_len, self.vocab_size, 0 if split == "train" else 1)

    def evaluate(self, tokens, labels, out_dir):
        diffs = (tokens[:, 1:] - tokens[:, :-1]) % self.vocab_size
        return {"progression_frac": (diffs == diffs[:, :1]).all(1).float().mean().item()}


class ToyCondTask(ToyTask):
    name = "toy-cond"
    num_classes = 3


def class_tokens(n: int, seq_len: int, vocab: int, classes: int, keep: float, seed: int):
    """Row i has label i mod ``classes``; each token is the label with probability ``keep``, else uniform."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    noise = torch.randint(vocab, (n, seq_len), generator=g)
    keep_mask = torch.rand(n, seq_len, generator=g) < keep
    return TokenData(torch.where(keep_mask, labels[:, None].expand(n, seq_len), noise), labels)


class ToyClassTask(ToyCondTask):
    """A class-conditional task where each class has its own token (half the tokens of a row are
    its label, the rest uniform): the conditional and the unconditional model differ at every position."""
    name = "toy-class"
    vocab_size = 6
    seq_len = 8
    description = "rows of mostly their label's token (tests)"

    def load(self, split):
        return class_tokens(256 if split == "train" else 64, self.seq_len, self.vocab_size, self.num_classes, 0.5,
                            0 if split == "train" else 1)

    def evaluate(self, tokens, labels, out_dir):
        return {"label_token_frac": (tokens == labels[:, None]).float().mean().item()}

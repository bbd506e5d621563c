"""Character-level LSTM language model on Shakespeare's plays: network, data order, training.

The network is a stock `torch.nn.LSTM` fed one-hot characters (so its input matrix is the
character embedding, and every weight is an LSTM gate matrix or the output layer, all
mappable to a chip) and a `torch.nn.Linear` read-out to the 79-symbol vocabulary of
hil.datasets.shakespeare.

Everything a chip run must share with its fp32 reference is a function of the config:
- initial weights: `CharLSTM.init_weights(init_seed)` draws every tensor, in parameter
  order, from one seeded torch generator: the LSTM's tensors and the read-out weight
  U(−1/√H, 1/√H) (torch's default law for both), the read-out bias U(−1/√79, 1/√79); then
  the forget-gate bias is set to 1;
- data order: epoch e concatenates the training plays in the order
  `default_rng([data_seed, e]).permutation`, cuts the text into `batch` equal streams and
  walks them `seq_len` characters at a time (truncated BPTT; the LSTM state is carried from
  one window to the next and detached);
- the step: mean cross-entropy over the window, gradients clipped to norm `clip`, one
  optimizer step. `train` takes the optimizer as an argument; the reference's is torch SGD.
Bits per character are cross-entropy / ln 2 over every predicted character of the split
(streams cut the same way, the first character of each stream unpredicted).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from hil.datasets.shakespeare import VOCAB_SIZE, decode, encode

State = Tuple[torch.Tensor, torch.Tensor]
SEPARATOR = encode("\n")


@dataclass(frozen=True)
class CharLstmConfig:
    """Network size and training hyperparameters of one run."""

    hidden: int = 128
    layers: int = 1
    seq_len: int = 100
    batch: int = 32
    optimizer: str = "sgd"         # "sgd" or "adam" (then momentum is Adam's β1)
    lr: float = 1.0
    momentum: float = 0.9
    clip: float = 5.0
    epochs: int = 4
    init_seed: int = 0
    data_seed: int = 0
    eval_batch: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


class CharLSTM(nn.Module):
    """One-hot characters → `layers` × LSTM(hidden) → Linear → logits over the vocabulary."""

    def __init__(self, hidden: int, layers: int = 1, vocab: int = VOCAB_SIZE) -> None:
        super().__init__()
        self.vocab = vocab
        self.lstm = nn.LSTM(vocab, hidden, num_layers=layers)
        self.out = nn.Linear(hidden, vocab)

    def init_weights(self, seed: int) -> None:
        """Seeded initial weights, independent of torch's global generator (the law is in
        the module docstring; chip runs rely on it staying put)."""
        g = torch.Generator().manual_seed(int(seed))
        h = self.lstm.hidden_size
        with torch.no_grad():
            for name, p in self.named_parameters():
                bound = 1.0 / math.sqrt(h if name.startswith("lstm") else p.shape[-1])
                p.uniform_(-bound, bound, generator=g)
            for layer in range(self.lstm.num_layers):
                getattr(self.lstm, f"bias_ih_l{layer}")[h:2 * h] = 1.0   # forget gate
                getattr(self.lstm, f"bias_hh_l{layer}")[h:2 * h] = 0.0

    def forward(self, codes: torch.Tensor, state: Optional[State] = None
                ) -> Tuple[torch.Tensor, State]:
        """codes (T, B) int64 → logits (T, B, vocab) and the final (h, c)."""
        x = nn.functional.one_hot(codes, self.vocab).to(self.out.weight.dtype)
        y, state = self.lstm(x, state)
        return self.out(y), state


def build_model(cfg: CharLstmConfig) -> CharLSTM:
    model = CharLSTM(cfg.hidden, cfg.layers)
    model.init_weights(cfg.init_seed)
    return model


def reference_optimizer(cfg: CharLstmConfig) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """The fp32 reference's optimizer: SGD (or Adam) with the config's lr and momentum."""
    def make(model: nn.Module) -> torch.optim.Optimizer:
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.momentum, 0.999))
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {cfg.optimizer!r}")
    return make


def streams(codes: np.ndarray, batch: int) -> np.ndarray:
    """`codes` cut into `batch` equal consecutive streams, shape (batch, length); the tail
    that does not fill a stream is dropped."""
    length = len(codes) // batch
    if length < 2:
        raise ValueError(f"{len(codes)} characters cannot make {batch} streams")
    return np.ascontiguousarray(codes[:batch * length].reshape(batch, length))


def epoch_streams(plays: Sequence[np.ndarray], batch: int, data_seed: int,
                  epoch: int) -> np.ndarray:
    """The training streams of `epoch` (1-based): plays in a seeded order, one newline
    between two plays."""
    order = np.random.default_rng([data_seed, epoch]).permutation(len(plays))
    parts: List[np.ndarray] = []
    for i in order:
        if parts:
            parts.append(SEPARATOR)
        parts.append(plays[i])
    return streams(np.concatenate(parts), batch)


def windows(s: np.ndarray, seq_len: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets), each (T, batch), T = seq_len but for a shorter last window."""
    for t in range(0, s.shape[1] - 1, seq_len):
        end = min(t + seq_len, s.shape[1] - 1)
        yield s[:, t:end].T, s[:, t + 1:end + 1].T


def _detach(state: State) -> State:
    return state[0].detach(), state[1].detach()


def evaluate_bpc(model: CharLSTM, codes: np.ndarray, batch: int = 32, seq_len: int = 100,
                 max_chars: Optional[int] = None) -> float:
    """Bits per character of `codes` (the first `max_chars` only, if given)."""
    if max_chars is not None:
        codes = codes[:max_chars]
    s = streams(codes, batch)
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for x, y in windows(s, seq_len):
            logits, state = model(torch.from_numpy(x.astype(np.int64)), state)
            total += float(nn.functional.cross_entropy(
                logits.reshape(-1, model.vocab), torch.from_numpy(y.astype(np.int64)).reshape(-1),
                reduction="sum"))
            count += y.size
    model.train(was_training)
    return total / count / math.log(2)


@dataclass
class EpochRecord:
    """One epoch of training: mean training bpc, validation bpc, throughput."""

    epoch: int
    steps: int
    train_bpc: float
    validation_bpc: float
    tokens: int
    train_seconds: float
    tokens_per_s: float
    eval_seconds: float


@dataclass
class TrainResult:
    config: CharLstmConfig
    epochs: List[EpochRecord] = field(default_factory=list)


def train(model: CharLSTM, cfg: CharLstmConfig, train_plays: Sequence[np.ndarray],
          validation: np.ndarray, make_optimizer: Optional[Callable] = None,
          max_steps: Optional[int] = None, validation_chars: Optional[int] = None,
          on_epoch: Optional[Callable[[EpochRecord], None]] = None,
          on_step: Optional[Callable[[int, int, float], None]] = None) -> TrainResult:
    """Train for cfg.epochs epochs (or `max_steps` steps per epoch, for tests), evaluating
    validation bpc after each. `make_optimizer(model)` defaults to the reference SGD;
    `on_step(epoch, step, loss)` sees every step (progress bars, live metrics)."""
    opt = (make_optimizer or reference_optimizer(cfg))(model)
    result = TrainResult(cfg)
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        s = epoch_streams(train_plays, cfg.batch, cfg.data_seed, epoch)
        state: Optional[State] = None
        loss_sum, tokens, steps = 0.0, 0, 0
        t0 = time.perf_counter()
        for x, y in windows(s, cfg.seq_len):
            if max_steps is not None and steps >= max_steps:
                break
            logits, state = model(torch.from_numpy(x.astype(np.int64)), state)
            state = _detach(state)
            loss = nn.functional.cross_entropy(logits.reshape(-1, model.vocab),
                                               torch.from_numpy(y.astype(np.int64)).reshape(-1))
            opt.zero_grad()
            loss.backward()
            if cfg.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            loss_value = float(loss.detach())
            loss_sum += loss_value * y.size
            tokens += y.size
            steps += 1
            if on_step:
                on_step(epoch, steps, loss_value)
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        val = evaluate_bpc(model, validation, cfg.eval_batch, cfg.seq_len, validation_chars)
        rec = EpochRecord(epoch, steps, loss_sum / max(tokens, 1) / math.log(2), val, tokens,
                          train_s, tokens / train_s if train_s > 0 else float("nan"),
                          time.perf_counter() - t1)
        result.epochs.append(rec)
        if on_epoch:
            on_epoch(rec)
        if not math.isfinite(rec.train_bpc):
            break
    return result


def sample(model: CharLSTM, length: int, seed: int, prime: str = "\n",
           temperature: float = 1.0) -> str:
    """`length` characters drawn from the model after `prime` (seeded, so repeatable)."""
    g = torch.Generator().manual_seed(int(seed))
    was_training = model.training
    model.eval()
    out: List[int] = []
    with torch.no_grad():
        logits, state = model(torch.from_numpy(encode(prime).astype(np.int64))[:, None])
        for _ in range(length):
            p = torch.softmax(logits[-1, 0] / temperature, dim=0)
            nxt = int(torch.multinomial(p, 1, generator=g))
            out.append(nxt)
            logits, state = model(torch.tensor([[nxt]]), state)
    model.train(was_training)
    return decode(np.array(out, dtype=np.int64))

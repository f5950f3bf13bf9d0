"""Hugging Face-format models for a real vLLM server, made from what ships here.

vLLM's CPU build loads safetensors, not GGUF, so the models a vLLM test or benchmark serves
are made locally (needs ``pip install 'particlescale[export]'``: transformers, gguf,
accelerate and torch; use the CPU build of torch where there is no GPU):

* :func:`export_hf` -- a known GGUF (``qwen2.5-0.5b``) or a ``.gguf`` path loaded with
  transformers (``gguf_file=``; the weights are dequantized) and saved as a safetensors
  directory in ``dtype`` (bf16 by default) with its tokenizer and chat template, ready for
  ``vllm serve DIR``. Idempotent: a directory holding a finished export of the same source
  (stamp file ``particlescale-export.json``) is left as it is.
* :func:`tiny_prm` -- process reward models with the real architectures and random weights,
  small enough to start in seconds: ``qwen-prm`` is a ``Qwen2ForProcessRewardModel`` (the
  Qwen2.5-Math-PRM architecture vLLM implements natively; STEP pooling at ``<extra_0>`` =
  id 151651, rows ``[p_neg, p_pos]``) and ``math-shepherd`` a ``LlamaForCausalLM`` scored at
  a step tag by the log-odds of its ``+`` and ``-`` tokens (Math-Shepherd's recipe). Both use
  the exported Qwen tokenizer: for ``qwen-prm`` its id 151651 is renamed ``<extra_0>`` (as in
  Qwen2.5-Math-PRM's tokenizer); Math-Shepherd's step tag `` ки`` is two Qwen tokens, and the
  second (``и``) is the tag id. The scores mean nothing; the wire format, batching and error
  paths are the real ones. :data:`PRM_INFO` (``particlescale-prm.json`` in the directory)
  records the tag ids and the vLLM flags that serve the model.

vLLM flags (0.32, checked against its source): ``qwen-prm`` needs none beyond the model
(``--runner pooling`` is detected from the architecture; STEP pooling and step_tag_id 151651
are the model's defaults). A Math-Shepherd ``*ForCausalLM`` under ``--runner pooling`` is
converted to an *embedding* model by default (its ``/pooling`` answer is then one vector per
input, not one row per step): it needs ``--convert classify`` with ``--hf-overrides
'{"classifier_from_token": ["+", "-"], "method": "no_post_processing"}'`` (the classifier is
the LM head's ``+``/``-`` rows, soft-maxed) and ``--pooler-config '{"task": "token_classify",
"pooling_type": "STEP", "step_tag_id": TAG}'``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from particlescale import models as registry
from particlescale.errors import ConfigError, ModelError

EXPORT_STAMP = "particlescale-export.json"
PRM_INFO = "particlescale-prm.json"
DTYPES = ("bfloat16", "float16", "float32")
PRM_KINDS = ("qwen-prm", "math-shepherd")
QWEN_PRM_TAG_ID = 151651
QWEN_PRM_TAG = "<extra_0>"
SHEPHERD_TAG = " ки"
INSTALL_HINT = "install them with: pip install 'particlescale[export]' (CPU torch where no GPU)"


def _imports() -> tuple[Any, Any]:
    """torch and transformers, or a ModelError that says how to install them."""
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ModelError(f"export needs torch and transformers ({e.name} is missing); "
                         f"{INSTALL_HINT}") from None
    return torch, transformers


def _source_id(path: Path, dtype: str) -> dict[str, Any]:
    st = path.stat()
    return {"source": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "dtype": dtype, "format": 1}


def is_exported(out_dir: Path, stamp: dict[str, Any] | None = None) -> bool:
    """True when ``out_dir`` holds a finished export (of the source in ``stamp``, if given)."""
    try:
        found = json.loads((Path(out_dir) / EXPORT_STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp is None or found == stamp


def _fresh_tmp(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move a finished ``tmp`` to ``out_dir`` (replacing a stale export there)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def _check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"DIR: {out_dir} is a file; give a directory path")
    if (out_dir.is_dir() and any(out_dir.iterdir()) and not force
            and not (out_dir / EXPORT_STAMP).exists() and not (out_dir / PRM_INFO).exists()):
        raise ConfigError(f"DIR: {out_dir} is not empty and holds no particlescale export; "
                          "give an empty or new directory, or pass --force to replace it")


def export_hf(spec: str, out_dir: str | os.PathLike[str], *, dtype: str = "bfloat16",
              force: bool = False) -> Path:
    """Export the GGUF model ``spec`` (known name or ``.gguf`` path) to a Hugging Face
    safetensors directory ``out_dir`` (tokenizer and chat template included)."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    out = Path(out_dir).expanduser()
    src = registry.resolve(spec)
    stamp = _source_id(src, dtype)
    if is_exported(out, stamp) and not force:
        return out
    _check_target(out, force)
    torch, transformers = _imports()
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise ModelError(f"export needs the gguf package; {INSTALL_HINT}") from None
    tmp = _fresh_tmp(out)
    try:
        kw = {"gguf_file": src.name}
        tok = transformers.AutoTokenizer.from_pretrained(str(src.parent), **kw)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(src.parent), dtype=getattr(torch, dtype), **kw)
        # transformers >= 5 keeps its GGUF quantizer attached even when it dequantized every
        # weight at load time, and refuses to save such a model: the weights are plain
        # tensors, so drop the marker.
        if getattr(model, "hf_quantizer", None) is not None:
            if any(type(p) is not torch.nn.Parameter for p in model.parameters()):
                raise ModelError(f"export: transformers kept {src.name}'s weights packed; "
                                 "upgrade transformers or uninstall `kernels` and retry")
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        if not getattr(tok, "chat_template", None):
            raise ModelError(f"export: {src.name} carries no chat template; a vLLM server "
                             "would need --chat-template")
        (tmp / EXPORT_STAMP).write_text(json.dumps(stamp))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _copy_tokenizer(tokenizer_dir: Path, dest: Path) -> None:
    names = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
             "special_tokens_map.json", "vocab.json", "merges.txt")
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise ConfigError(f"tokenizer: {tokenizer_dir} has no tokenizer.json; pass the "
                          "directory of `particlescale models export-hf qwen2.5-0.5b DIR`")
    for name in names:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, dest / name)


def _rename_added_token(dest: Path, token_id: int, content: str) -> None:
    """Rename added token ``token_id`` to ``content`` in tokenizer.json (and the config)."""
    tj = json.loads((dest / "tokenizer.json").read_text())
    hit = [t for t in tj.get("added_tokens", []) if t.get("id") == token_id]
    if not hit:
        raise ModelError(f"tokenizer: no added token with id {token_id} to rename")
    old = hit[0]["content"]
    hit[0]["content"] = content
    vocab = (tj.get("model") or {}).get("vocab")
    if isinstance(vocab, dict) and vocab.get(old) == token_id:  # GGUF-made: in the BPE vocab too
        vocab[content] = vocab.pop(old)
    (dest / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    cfg_path = dest / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    decoder = cfg.get("added_tokens_decoder")
    if isinstance(decoder, dict) and str(token_id) in decoder:
        decoder[str(token_id)]["content"] = content
        cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2))


def _small_config(vocab: int, hidden: int, layers: int) -> dict[str, Any]:
    return {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": max(1, hidden // 32),
            "num_key_value_heads": max(1, hidden // 32), "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "bos_token_id": 151643,
            "eos_token_id": 151645, "pad_token_id": 151643}


def tiny_prm(kind: str, out_dir: str | os.PathLike[str], tokenizer_dir: str | os.PathLike[str],
             *, hidden: int = 64, layers: int = 2, seed: int = 0) -> dict[str, Any]:
    """Write a random-weight PRM of ``kind`` to ``out_dir``; returns its :data:`PRM_INFO`."""
    if kind not in PRM_KINDS:
        raise ConfigError(f"kind: {kind!r} is not one of {', '.join(PRM_KINDS)}")
    if hidden % 32 or hidden < 32 or layers < 1:
        raise ConfigError("hidden: must be a multiple of 32 (vLLM's CPU attention head "
                          "sizes); layers: >= 1")
    out = Path(out_dir).expanduser()
    _check_target(out, force=True)
    torch, transformers = _imports()
    tmp = _fresh_tmp(out)
    try:
        _copy_tokenizer(Path(tokenizer_dir).expanduser(), tmp)
        if kind == "qwen-prm":
            _rename_added_token(tmp, QWEN_PRM_TAG_ID, QWEN_PRM_TAG)
        tok = transformers.AutoTokenizer.from_pretrained(str(tmp))
        torch.manual_seed(seed)
        vocab = max(len(tok), 151936)
        base = _small_config(vocab, hidden, layers)
        if kind == "qwen-prm":
            info = _write_qwen_prm(torch, transformers, tok, base, tmp)
        else:
            info = _write_shepherd(torch, transformers, tok, base, tmp)
        info.update({"kind": kind, "hidden": hidden, "layers": layers, "seed": seed})
        (tmp / PRM_INFO).write_text(json.dumps(info, indent=1, ensure_ascii=False))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _write_qwen_prm(torch: Any, transformers: Any, tok: Any, base: dict[str, Any],
                    dest: Path) -> dict[str, Any]:
    if tok.convert_tokens_to_ids(QWEN_PRM_TAG) != QWEN_PRM_TAG_ID:
        raise ModelError(f"tokenizer: {QWEN_PRM_TAG} is not id {QWEN_PRM_TAG_ID}")
    cfg = transformers.Qwen2Config(**base)
    body = transformers.Qwen2Model(cfg).to(torch.bfloat16)
    hidden = cfg.hidden_size
    weights = {f"model.{k}": v.contiguous() for k, v in body.state_dict().items()}
    for name, shape in (("score.0.weight", (hidden, hidden)), ("score.0.bias", (hidden,)),
                        ("score.2.weight", (2, hidden)), ("score.2.bias", (2,))):
        weights[name] = (torch.randn(shape) * 0.5).to(torch.bfloat16)
    from safetensors.torch import save_file

    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = cfg.to_dict()
    config.update({"architectures": ["Qwen2ForProcessRewardModel"], "model_type": "qwen2",
                   "num_labels": 2, "dtype": "bfloat16"})
    (dest / "config.json").write_text(json.dumps(config, indent=1))
    return {"architecture": "Qwen2ForProcessRewardModel", "step_tag": QWEN_PRM_TAG,
            "step_tag_id": QWEN_PRM_TAG_ID, "vllm_args": ["--runner", "pooling"]}


def _write_shepherd(torch: Any, transformers: Any, tok: Any, base: dict[str, Any],
                    dest: Path) -> dict[str, Any]:
    tag_ids = tok.encode(SHEPHERD_TAG, add_special_tokens=False)
    plus, minus = (tok.convert_tokens_to_ids(t) for t in ("+", "-"))
    cfg = transformers.LlamaConfig(**base)
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():  # make the +/- rows of the LM head differ visibly
        model.lm_head.weight[plus].normal_(0, 1.0)
        model.lm_head.weight[minus].normal_(0, 1.0)
    model.save_pretrained(str(dest), safe_serialization=True)
    tag = tag_ids[-1]
    pooler = {"task": "token_classify", "pooling_type": "STEP", "step_tag_id": tag}
    overrides = {"classifier_from_token": ["+", "-"], "method": "no_post_processing"}
    return {"architecture": "LlamaForCausalLM", "step_tag": SHEPHERD_TAG,
            "step_tag_id": tag, "step_tag_ids": tag_ids, "returned_token_ids": [plus, minus],
            "vllm_args": ["--runner", "pooling", "--convert", "classify",
                          "--hf-overrides", json.dumps(overrides),
                          "--pooler-config", json.dumps(pooler)]}

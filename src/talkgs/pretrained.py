"""The pretrained models that install from the package registry, found on disk.

talkgs cannot download weights from model hubs at run time. Three real pretrained models come
inside registry packages instead (pinned in ``constraints.txt``, installed by ``make setup``):

- ``pocketsphinx`` (5.1.1): CMU Sphinx's US-English acoustic model (``model/en-us/en-us/``, a
  continuous HMM over 39 CMUdict phones + silence and fillers) and its phone language model
  (``model/en-us/en-us-phone.lm.bin``): the ``phonemes`` audio encoder.
- ``face-recognition-models`` (0.3.0, an sdist of data files) for ``dlib-bin`` (20.0.1): dlib's
  ResNet face descriptor ``dlib_face_recognition_resnet_model_v1.dat`` (128-D, LFW 99.38 %; CSIM)
  and the iBUG 300-W 68-point ``shape_predictor_68_face_landmarks.dat`` (LMD-68).

Each path can be overridden by an environment variable (a copy of the file elsewhere, e.g. on a
machine without the package): ``TALKGS_SPHINX_HMM``, ``TALKGS_SPHINX_PHONE_LM``,
``TALKGS_DLIB_FACE_DESCRIPTOR``, ``TALKGS_DLIB_SHAPE_68``. A missing file raises
:class:`PretrainedMissing` naming the file and the fix; ``python -m talkgs.pretrained`` checks all
of them (``make setup`` runs it, so a broken install fails at setup, not as a silent n/a later).

``face_recognition_models`` is located with :func:`importlib.util.find_spec`, not imported: its
``__init__`` imports ``pkg_resources``, which current setuptools no longer ship.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from talkgs.preprocess.errors import InputError

__all__ = ["PretrainedMissing", "sphinx_hmm", "sphinx_phone_lm", "dlib_face_descriptor", "dlib_shape_68", "check_all"]

_FIX = "Run `make setup` (it installs the pinned package), or set {env} to a copy of the file."


class PretrainedMissing(InputError):
    """A registry-installed model file is not where it should be; the message says how to fix it."""


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _resolve(env: str, package: str, rel: str, what: str, *, is_dir: bool = False) -> Path:
    override = os.environ.get(env)
    if override:
        path = Path(override).expanduser()
        origin = f"{env}={override}"
    else:
        root = _package_dir(package)
        if root is None:
            raise PretrainedMissing(f"{what}: the package {package!r} is not installed. " + _FIX.format(env=env))
        path = root / rel
        origin = f"package {package}"
    ok = path.is_dir() if is_dir else path.is_file()
    if not ok:
        raise PretrainedMissing(f"{path}: {what} not found ({origin}). " + _FIX.format(env=env))
    return path


def sphinx_hmm() -> Path:
    """pocketsphinx's US-English acoustic model folder."""
    return _resolve("TALKGS_SPHINX_HMM", "pocketsphinx", "model/en-us/en-us", "pocketsphinx en-us acoustic model", is_dir=True)


def sphinx_phone_lm() -> Path:
    """pocketsphinx's English phone language model (allphone decoding)."""
    return _resolve("TALKGS_SPHINX_PHONE_LM", "pocketsphinx", "model/en-us/en-us-phone.lm.bin", "pocketsphinx en-us phone language model")


def dlib_face_descriptor() -> Path:
    """dlib's ResNet face recognition model (128-D descriptors)."""
    return _resolve(
        "TALKGS_DLIB_FACE_DESCRIPTOR", "face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat",
        "dlib ResNet face descriptor model",
    )  # fmt: skip


def dlib_shape_68() -> Path:
    """dlib's 68-point (iBUG 300-W) shape predictor."""
    return _resolve(
        "TALKGS_DLIB_SHAPE_68", "face_recognition_models", "models/shape_predictor_68_face_landmarks.dat",
        "dlib 68-point shape predictor",
    )  # fmt: skip


def check_all() -> dict[str, Path]:
    """Every model file and the two packages that read them; raises :class:`PretrainedMissing`."""
    paths = {
        "sphinx_hmm": sphinx_hmm(),
        "sphinx_phone_lm": sphinx_phone_lm(),
        "dlib_face_descriptor": dlib_face_descriptor(),
        "dlib_shape_68": dlib_shape_68(),
    }
    for module, pkg in (("pocketsphinx", "pocketsphinx==5.1.1"), ("dlib", "dlib-bin==20.0.1.post1")):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise PretrainedMissing(f"cannot import {module} ({e}). Run `make setup` (it installs {pkg}).") from e
    return paths


def main() -> int:
    try:
        paths = check_all()
    except PretrainedMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"[pretrained] {name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

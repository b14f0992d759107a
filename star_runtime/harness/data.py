"""The offline data folder every evaluation reads (never downloaded at run time): where it is, its files
(one line naming a missing or damaged file and how to fetch it), and nltk sentence splitting from it.

The folder is ``--data_dir``, else ``$STAR_RUNTIME_DATA``; it holds ``ruler/`` (PaulGrahamEssays.json,
squad.json, hotpotqa.json, english_words.json), ``babilong/`` and ``nltk_data/`` (punkt_tab).
``python -m ruler.download --data_dir DIR`` fetches RULER's official files for users with internet.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ConfigError


def resolve_data_dir(data_dir: str | None, need: str = "ruler") -> Path:
    """The data folder; ``need`` is the benchmark subfolder it must hold (ruler or babilong)."""
    d = data_dir or os.environ.get("STAR_RUNTIME_DATA")
    if not d:
        raise ConfigError(f"no data folder: pass --data_dir DIR or set STAR_RUNTIME_DATA (it holds {need}/ and "
                          "nltk_data/; python -m ruler.download --data_dir DIR fetches RULER's official files)")
    p = Path(d).expanduser()
    if not (p / need).is_dir():
        raise ConfigError(f"data folder {p} has no {need}/ subfolder; point --data_dir at the folder holding "
                          f"{need}/ and nltk_data/")
    return p


def data_file(data_dir: Path, name: str, sub: str = "ruler") -> Path:
    """``<data_dir>/<sub>/<name>``, which must exist."""
    f = data_dir / sub / name
    if not f.exists():
        raise ConfigError(f"{f} is missing; fetch it with: python -m ruler.download --data_dir {data_dir}")
    return f


def read_json(data_dir: Path, name: str):
    """A JSON data file, or one line naming the file when it is truncated or damaged."""
    f = data_file(data_dir, name)
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{f} is damaged or truncated ({str(e).splitlines()[0][:80]}); fetch it again with: "
                          f"python -m ruler.download --data_dir {data_dir}") from None


def sentence_splitter(data_dir: Path):
    """nltk's sent_tokenize on the punkt_tab parameters of the data folder (no download)."""
    import nltk

    nltk_dir = data_dir / "nltk_data"
    if not (nltk_dir / "tokenizers" / "punkt_tab").is_dir():
        raise ConfigError(f"{nltk_dir}/tokenizers/punkt_tab is missing; copy NLTK's punkt_tab there")
    if str(nltk_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(nltk_dir))
    from nltk.tokenize import sent_tokenize

    return sent_tokenize

"""Fetch the official RULER raw files into a data folder (needs internet; never run implicitly).

  python -m ruler.download --data_dir ~/star_data

Gets SQuAD v2.0 dev, HotpotQA dev (distractor), dwyl's English word list and NLTK's punkt_tab. The essay
haystack (ruler/PaulGrahamEssays.json, {"text": ...}) is built by RULER's own essay script; copy it in from
a RULER checkout or from the data folder shipped with this project.
"""

from __future__ import annotations

import argparse
import io
import json
import urllib.request
import zipfile
from pathlib import Path

FILES = {
    "squad.json": "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json",
    "hotpotqa.json": "http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_dev_distractor_v1.json",
    "english_words.json": "https://raw.githubusercontent.com/dwyl/english-words/master/words_dictionary.json",
}
# NLTK's own package index serves punkt_tab from here; unpacked under nltk_data/tokenizers/ as NLTK expects.
PUNKT_TAB = "https://raw.githubusercontent.com/nltk/nltk_data/gh-pages/packages/tokenizers/punkt_tab.zip"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True)
    a = p.parse_args(argv)
    root = Path(a.data_dir).expanduser()
    (root / "ruler").mkdir(parents=True, exist_ok=True)
    for name, url in FILES.items():
        dst = root / "ruler" / name
        print(f"{url} -> {dst}")
        with urllib.request.urlopen(url) as r:
            data = r.read()
        if name == "english_words.json":  # {"word": 1} -> {"0": "word", ...} as the data folder keeps it
            words = sorted(json.loads(data))
            data = json.dumps({str(i): w for i, w in enumerate(words)}).encode()
        dst.write_bytes(data)
    print(f"{PUNKT_TAB} -> {root / 'nltk_data' / 'tokenizers'}")
    with urllib.request.urlopen(PUNKT_TAB) as r:
        with zipfile.ZipFile(io.BytesIO(r.read())) as z:
            z.extractall(root / "nltk_data" / "tokenizers")
    essays = root / "ruler" / "PaulGrahamEssays.json"
    if not essays.exists():
        print(f"still missing: {essays} (see this module's docstring)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""English sentences that ship with Python: the docstrings of the standard library, split into sentences.

No text data set is available offline. A sentence encoder can still be compressed and fine-tuned without labels, by
distillation from the original model, on any English text; the standard library's docstrings are real, varied
English prose (about 6,600 distinct sentences on Python 3.11) that every machine has. They are technical, so the
measurements made on them (agreement of the compressed encoder with the original on held-out sentences) say how
faithful the compressed encoder is on this kind of text, not its quality on a benchmark such as STS.

The corpus depends only on the Python version; ``splits`` shuffles it with a fixed seed and cuts disjoint test,
validation and training parts.
"""

import contextlib
import importlib
import inspect
import io
import random
import re
import sys
import warnings

# modules that open windows, print on import, or only hold tests and tools
_SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "ensurepip", "venv", "lib2to3",
         "pydoc_data", "test"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _documented_objects(module) -> list:
    objects = [module]
    for name, obj in vars(module).items():
        if name.startswith("_") or inspect.ismodule(obj):
            continue
        if getattr(obj, "__module__", module.__name__) != module.__name__:
            continue  # imported from elsewhere: counted with its own module
        objects.append(obj)
        if inspect.isclass(obj):
            objects += [v for k, v in vars(obj).items() if not k.startswith("_") and callable(v)]
    return objects


def sentences(min_chars: int = 40, max_chars: int = 300) -> list[str]:
    """Distinct sentences of ``min_chars``..``max_chars`` characters, mostly letters, in module order."""
    out, seen = [], set()
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in _SKIP:
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except BaseException:  # noqa: BLE001  (platform-specific modules fail to import in many ways)
            continue
        for obj in _documented_objects(module):
            doc = getattr(obj, "__doc__", None)
            if not isinstance(doc, str):
                continue
            for s in _SENTENCE_END.split(" ".join(doc.split())):
                if min_chars <= len(s) <= max_chars and sum(c.isalpha() for c in s) > 0.7 * len(s) and s not in seen:
                    seen.add(s)
                    out.append(s)
    return out


def splits(test: int = 1024, validation: int = 512, seed: int = 0) -> dict[str, list[str]]:
    """Disjoint "test", "validation" and "train" parts (train: the rest) of the shuffled corpus."""
    texts = sentences()
    if len(texts) < test + validation + 1:
        raise ValueError(f"the corpus has {len(texts)} sentences, fewer than test={test} + validation={validation}")
    random.Random(seed).shuffle(texts)
    return {"test": texts[:test], "validation": texts[test:test + validation], "train": texts[test + validation:]}

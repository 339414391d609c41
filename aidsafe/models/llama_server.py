"""llama-cpp-python's OpenAI-compatible server, started so that it runs on every CPU.

``python -m aidsafe.models.llama_server --model FILE.gguf [llama_cpp.server options]`` is
``python -m llama_cpp.server`` with two differences:

* every model is loaded inside :func:`~aidsafe.models.local.llama_guard` (llama.cpp's extra buffer
  types off: no weight repacking, no AMX kernels, which crash on Q4_0/Q4_1 weights on Intel CPUs
  with AMX);
* ``--chat-template FILE`` renders the chat with that Jinja template instead of the one in the
  GGUF file, as vLLM's ``--chat-template`` does (e.g. a template that refuses a system role, as
  Mixtral-8x7B-Instruct's and Gemma's do).

The rest of the command line goes to llama-cpp-python's own server unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .local import llama_guard

__all__ = ["customize_loader", "main"]


def customize_loader(chat_template: str | None = None) -> None:
    """Make llama-cpp-python's server load every model inside the guard (and, when given, with
    ``chat_template`` as its chat format). Changes that server's loader for this process."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from llama_cpp.server.model import LlamaProxy

    load = LlamaProxy.load_llama_from_model_settings

    def guarded(settings: Any) -> Any:
        with llama_guard():
            llama = load(settings)
        if chat_template is not None:
            vocab = llama._model

            def text(token: int) -> str:
                return vocab.token_get_text(token) if token >= 0 else ""  # -1: the model has no such token

            formatter = Jinja2ChatFormatter(template=chat_template, eos_token=text(llama.token_eos()), bos_token=text(llama.token_bos()))
            llama.chat_handler = formatter.to_chat_handler()
        return llama

    LlamaProxy.load_llama_from_model_settings = staticmethod(guarded)  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template file to use instead of the GGUF's own")
    known, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    template = Path(known.chat_template).read_text(encoding="utf-8") if known.chat_template else None
    customize_loader(template)
    from llama_cpp.server.__main__ import main as serve

    sys.argv = [sys.argv[0], *rest]
    serve()


if __name__ == "__main__":
    main()

"""Hugging Face Space entry point: the Seq2Seq Chatbot Arena on the checkpoints beside this file.

The Space runs ``python app.py``; Spaces set GRADIO_SERVER_NAME=0.0.0.0 and the port. Locally:

    python -m demo_app.build_space && cd dist/space && python app.py     # http://127.0.0.1:7860
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # core/ and demo_app/ are copied beside this file

import core  # noqa: E402
from demo_app.serve import serve  # noqa: E402

CHECKPOINTS = HERE / "checkpoints"

if __name__ == "__main__":
    print(f"Seq2Seq Chatbot Arena: code from {Path(core.__file__).parent.parent}, checkpoints from {CHECKPOINTS}",
          flush=True)
    serve(CHECKPOINTS if CHECKPOINTS.exists() else None)

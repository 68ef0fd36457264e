"""Kiln: a content-addressed, Prefect-orchestrated pipeline from raw text to trained Llama models.

This package is the bottom layer: what every other package shares, importing nothing
of ours and neither Prefect nor Dask — the config loader (`kiln.config`), the error
type (`kiln.errors`), optional-extra imports (`kiln.optional`) and the chat format
(`kiln.chat`). The layers above, each importing only those below it:

    cli/                   the `kiln` command and the chat REPL
    flows/                 Prefect flows: the DAG and `kiln plan`
    tasks/                 one module per stage (the only other Prefect importer)
    trainer/  model/  storage/   training loops; the network and tokenizer; the artifact store
"""

__version__ = "0.1.0"

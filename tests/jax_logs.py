"""Capture what jax compiles inside a block (for no-recompilation tests)."""

import contextlib
import logging

import jax


@contextlib.contextmanager
def compiled_messages():
    """Yield a list that receives jax's "Compiling ..." log messages of the block."""
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield messages
    finally:
        logger.removeHandler(handler)
    messages[:] = [m for m in messages if "Compiling" in m]

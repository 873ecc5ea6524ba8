"""Developer tools, not needed to use or train: ``python -m semiseg_fast.tools.gpu_check`` (compile
every Triton kernel ahead of time for a named GPU and check registers and spills) and
``python -m semiseg_fast.tools.config_docs`` (write docs/training.md from the config)."""

"""The process: the CLI (`cli`), serving one config with reload and drain (`server`),
binding its listeners (`ports`), `--workers` supervision (`workers`), the admin listener
(`admin`) and `make demo` (`demo`).

May import: every layer, including `proxy.emulator` (for `emulate-clerk` and the demo). Nothing
imports it.
"""

"""Entry points that wire the wings together (`dxr-node analyze`, `serve`, `status`,
`retry`, `send`, `user`).

The only place allowed to import both the node and the console, or the pipeline and the
node's store: every library package below keeps one direction of imports (checked by
import-linter, contracts in pyproject.toml; see docs/architecture.md).
"""

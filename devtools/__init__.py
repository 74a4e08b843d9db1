"""Development tools beside the product: a local control plane (etcd, kube-apiserver, built from
the Go module proxy, with its PKI), redis-server and PostgreSQL for `make run` and the tests, and
the operator as a process for the e2e tests and the bench.

Installed from a clone (`pip install -e '.[dev]'`), never in the image; `controller` never imports
it (import-linter), and `relayjob-operator sandbox|dev` reach it through the `relayjob.commands`
entry points that pyproject.toml registers.
"""

"""Root conftest: makes the real-stack fixtures available to every test folder."""

pytest_plugins = ["orders_ops.testing"]

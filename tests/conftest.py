"""The shared fixtures come from the test lab's pytest plugin (tests/lab/plugin.py)."""

pytest_plugins = ["tests.lab.plugin"]

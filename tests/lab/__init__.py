"""The test lab: the real things the suites run against, in one package that every suite imports.

The project's brief fixes the repository's top level, so the lab lives under tests/ rather than
beside it. Arrows point one way: suites import the lab; the lab imports no suite.

- paths.py          where the checkout and the lab's cache are
- waiting.py        wait_until: the one "poll until a deadline" helper
- processes.py      stop_process / stop_pid: the one way a started process is stopped
- model.py          tiny_model: the tiny random Llama 3.2 Vision checkpoint
- olah_mirror.py    Hub-style git repos served by a real mirror (olah), on loopback or the bridge
- folder_mirror.py  an in-process Hub that serves folders with byte ranges (the planner's reads)
- server.py         a real `vlmkit serve` process on a free loopback port
- chat.py           images and chat messages the tests send
- decoding.py       prompts and fixed-length greedy requests handed to a backend directly
- hosts.py          disposable systemd hosts (systemd-nspawn), their bridge and apt cache
- deploy.py         vault secrets, ansible-playbook (against test hosts, or plays on this machine), the smoke suite
- published.py      the published configs of the real models (tests/planner/fixtures)
- plugin.py         the pytest fixtures shared by every suite (registered by tests/conftest.py)
- __main__.py       `python -m tests.lab up|key|url|down`: a deployed local test host by hand
"""

"""Recorded workflow histories (JSON) that tests/replay replays against today's workflow code."""

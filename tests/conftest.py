"""Shared fixtures: one Ray + cloud app per session (tests.ray_fixtures), edge node
processes, fresh environments of the install profiles."""

from __future__ import annotations

pytest_plugins = ["tests.ray_fixtures", "tests.edge_fixtures", "tests.profile_envs"]

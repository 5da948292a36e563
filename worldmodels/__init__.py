"""Dynamics models behind one protocol (`WorldModel`): see worldmodels/protocol.py."""

from worldmodels.protocol import State, WorldModel

__all__ = ["State", "WorldModel"]

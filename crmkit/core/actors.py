"""Who is acting: a user with a role and teams, or the system itself."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Actor:
    """The user (or system process) on whose behalf a read or write happens."""

    id: int | None
    username: str
    role: str
    team_ids: frozenset[int] = field(default_factory=frozenset)
    primary_team: int | None = None
    locale: str = "en"
    display_name: str = ""
    system: bool = False

    @property
    def is_admin(self) -> bool:
        return self.system or self.role == "admin"

    def params(self) -> dict[str, object]:
        """Values for ``$me`` / ``$my_team`` / ``$my_teams`` in conditions."""
        return {"me": self.id, "my_team": self.primary_team, "my_teams": sorted(self.team_ids)}


SYSTEM = Actor(id=None, username="system", role="admin", system=True, display_name="System")

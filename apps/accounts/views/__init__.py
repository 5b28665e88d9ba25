"""Portal pages, one module per subject: home, keys, teams (and virtual accounts), users,
the tag glossary and the audit log."""

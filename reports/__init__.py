"""Presentation shared by the CLI and the web service: the self-contained HTML report and the score bands."""

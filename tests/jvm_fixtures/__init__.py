"""Fixtures the Android engine's JVM tests compare against: each module's ``write(out)`` runs a scenario through the
Python runtime and writes what it fed and returned as JSON under ``out`` (read via ``-Dpocketvlm.fixtures``)."""

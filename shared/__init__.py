"""The project's common library: settings, names, envelopes, clients, intake and worker runtime."""

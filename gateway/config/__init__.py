"""The configuration: typed settings, the validated policy rules, and their loader
(``gateway.config.load.load_settings``), every error reported at once."""

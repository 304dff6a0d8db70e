"""nnU-Net models: where they come from and whether they may run.

The catalogue of the field's models (``catalogue``), the local store
(``model_store``), results folders and their checks (``model_folder``,
``plans_check``), trust pins (``trust``), release archives and downloads
(``archive``, ``download``), the packages a model needs (``install_plan``) and
small synthetic folders for tests (``synthetic_model``).

May import: ``imaging`` and the root modules.
"""

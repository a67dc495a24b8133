"""What the tests share: paths and the in-process CLI (``cli``), fake head features (``head_checks``), the naive
attention formulas (``reference``), datasets in their download layouts (``layouts``), faults to plug into a run
(``faults``) and a reader of offline W&B runs (``wandb_offline``)."""

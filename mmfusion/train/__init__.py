"""Model stage, run by `workflow/rules/model.smk` (rules `cache_patches` = `mmfusion train
cache`, `cache_features` = `train features`, `train_fold` / `train_baseline` = `train fold`).

- `dataset`: the memory-mapped patch cache and each split's arrays.
- `features`: the frozen-backbone feature cache (`model.freeze_backbone`).
- `augment`: batched image augmentation. `config`: the `train` settings.
- `loop`: one fold's fold-honest training (`fit_fold`), as phases in `phases`;
  `averaging`: weight averaging (`train.ema_decay`).
- `device`: `train.device` -> torch device (torch and DGL CUDA checks), the log's device
  line; `gpu_lock`: one free GPU per job on a multi-GPU server.
- `metrics`: binary metrics and the validation threshold. `fold`: a fold from the cohort files.
- `scoring`: the one scoring function (`score_split`: every deep model's probabilities, in
  training, predict and Fig. 3; the diffusion noise depends on the seed only) and the Monte
  Carlo error of a diffusion score. `trained_fold`: a trained fold folder read back
  (records, model, preprocessed tables). `trajectory`: Fig. 3's reverse trajectories.
"""

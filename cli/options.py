"""Flags shared by several commands, declared once so every command spells them the same way."""
from __future__ import annotations

from typing import Optional

import typer

Model = typer.Option(None, "--model", help="Registered model name (see `linegen models`).")
Checkpoint = typer.Option(None, "--checkpoint", help="GPT checkpoint: local path or s3:// URI (official LlamaGen layout).")
VQCheckpoint = typer.Option(None, "--vq-checkpoint", help="VQ tokenizer checkpoint: local path or s3:// URI.")
TextEncoder = typer.Option(None, "--text-encoder", help="Text-to-image models: T5 encoder folder in the Hugging Face layout (config.json, weights, tokenizer), local path or s3:// prefix.")
RandomWeights = typer.Option(False, "--random-weights", help="Run without checkpoints (noise images; for trying the pipeline).")
Device = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
DType = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: bfloat16 on GPU, float32 on CPU).")
Cache = typer.Option("full", "--cache", help="KV cache policy: full, linear, streaming, h2o, snapkv, rkv, or auto (the setting measured for the model).")
# run/submit: no --cache means the config entry's setting for the model (`linegen tune` writes it), else full.
JobCache = typer.Option(None, "--cache", help="KV cache policy: full, linear, streaming, h2o, snapkv, rkv, or auto (the setting measured for the model: `linegen tune`'s in the config, else the one shipped with it). Default: the config entry's cache for the model, else full.")
CacheRatio = typer.Option(None, "--cache-ratio", help="Visual cache budget as a fraction of the tokens, e.g. 1/6 or 0.25 (default 1/6).")
CacheLines = typer.Option(None, "--cache-lines", help="Visual cache budget in token lines (instead of --cache-ratio).")
CacheOption = typer.Option(None, "--cache-option", help="Policy switch KEY=VALUE, repeatable: preset=NAME picks a named option set (linear: paper, structure, accumulate, ...); linear takes anchors, anchor_lines, recent_lines, aggregate (sum|mean|max), pool_1d, pool_2d, decay, shift_prior, cfg_shared, cfg_rank (cond|sum); streaming sinks; h2o recent_share; snapkv kernel; rkv window, kernel, mix, threshold.")
S3Endpoint = typer.Option(None, "--s3-endpoint-url", envvar="LINEGEN_S3_ENDPOINT_URL", help="Endpoint of an S3-compatible store.")
Json = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")
Seed = typer.Option(0, "--seed", help="Job seed; each image's seed derives from (seed, row, replica).")
CfgScale = typer.Option(None, "--cfg-scale", help="Classifier-free guidance scale (<= 1 disables guidance). Default: the model's.")
TopK = typer.Option(None, "--top-k", help="Top-k filtering (0 = off). Default: the model's.")
TopP = typer.Option(1.0, "--top-p", help="Nucleus filtering, in (0, 1].")
Temperature = typer.Option(None, "--temperature", help="Sampling temperature, > 0. Default: the model's.")

# Remote clusters (`submit`, `status`, `list`, `logs`, `cancel`, `resume`, `monitor`, `cost`)
Cluster = typer.Option(None, "--cluster", help="Ray cluster: its dashboard / Jobs API URL, e.g. http://HEAD:8265 (default: RAY_ADDRESS, or [cluster] address in the config).")
Token = typer.Option(None, "--token", help="Ray auth token (better: LINEGEN_RAY_TOKEN, RAY_AUTH_TOKEN, --token-file or RAY_AUTH_MODE=token with Ray's token file; a flag shows in the process list).")
TokenFile = typer.Option(None, "--token-file", help="File holding the Ray auth token (default: [cluster] token_file in the config).")
Header = typer.Option(None, "--header", help="Extra HTTP header NAME=VALUE sent to the cluster (e.g. for a proxy); repeatable.")
Config = typer.Option(None, "--config", help="Config file (default: $LINEGEN_CONFIG, else ~/.config/linegen/config.toml).")
Price = typer.Option(None, "--price", help="Price override DEVICE=DOLLARS_PER_HOUR, e.g. H100=3.29; repeatable (default: config [prices], else built-in).")
JobOut = typer.Option(None, "--out", help="Output root holding the job: a local folder or s3://bucket/prefix (default: from the job's metadata on the cluster, else [output] out).")

OptStr = Optional[str]
OptInt = Optional[int]
OptFloat = Optional[float]

"""A tiny random Janus checkpoint in transformers' layout, built offline (no download): JanusConfig
with a small LLaMA text config and an 8x8-token VQ, a byte-level BPE tokenizer trained here with
the `tokenizers` library, and a JanusProcessor (image processor + chat template) saved beside it.
`to_deepseek_folder` writes the same weights in DeepSeek's original layout."""
from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<image_placeholder>",
            "<begin_of_image>", "<end_of_image>", "<|User|>", "<|Assistant|>"]
# The shape of Janus-Pro's own template for one user turn (text only), ending with the assistant tag.
CHAT_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'user' %}<|User|>: "
                 "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}"
                 "{% endfor %}{{ '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|Assistant|>:{% endif %}")
CORPUS = ["a red cat sitting on a blue chair", "a photo of a dog running under the rain",
          "two green apples on a wooden table", "an astronaut riding a horse on the moon",
          "a watercolor painting of a small house by the sea"] * 4
GRID, IMAGE = 8, 32


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = SPECIALS[0]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=SPECIALS[1], pad_token=SPECIALS[2],
                                   padding_side="left", extra_special_tokens={"image_token": "<image_placeholder>",
                                   "boi_token": "<begin_of_image>", "eoi_token": "<end_of_image>"})


def build_model(tokenizer, seed: int = 0):
    import torch
    from transformers import JanusConfig, JanusForConditionalGeneration, LlamaConfig
    from transformers.models.janus.configuration_janus import JanusVisionConfig, JanusVQVAEConfig

    text = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=512,
                       rms_norm_eps=1e-6, bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = JanusVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=IMAGE,
                               patch_size=IMAGE // GRID, projection_dim=64, num_image_tokens=GRID * GRID)
    vq = JanusVQVAEConfig(embed_dim=8, num_embeddings=256, latent_channels=32, base_channels=32,
                          channel_multiplier=[1, 1, 2], num_res_blocks=1, projection_dim=64, image_token_embed_dim=64)
    config = JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"))
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config).eval()
    # Wider-than-default weights so greedy choices are far from ties (transformers' init is std 0.02).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vision_model" not in name and p.dim() >= 2:
                p.normal_(0, 0.3 if "generation" in name or "embed" in name else 0.12)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.generation_kwargs = {"boi_token_id": tokenizer.convert_tokens_to_ids("<begin_of_image>")}
    model.generation_config._from_model_config = False  # else loading rebuilds it from config.json, losing the above
    return model


def build_folder(path: Path, seed: int = 0):
    """Save the tiny Janus (weights, config, generation config, tokenizer, processor) -> its model."""
    from transformers import JanusImageProcessor, JanusProcessor

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed)
    model.save_pretrained(path)
    # Janus-Pro's own preprocessor maps pixels to [-1, 1] (mean = std = 0.5), as its VQ decodes them
    image_processor = JanusImageProcessor(size={"height": IMAGE, "width": IMAGE}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    JanusProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                   num_image_tokens=GRID * GRID).save_pretrained(path)
    return model


def to_deepseek_folder(hf_folder: Path, out: Path) -> None:
    """The same checkpoint in DeepSeek's layout: MultiModalityCausalLM keys and config, tokenizer only."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from linegen.workers.models.janus_checkpoint import to_deepseek

    out.mkdir(parents=True)
    state = {}
    for f in sorted(hf_folder.glob("*.safetensors")):
        state.update(load_file(f))
    save_file({k: v.contiguous() for k, v in to_deepseek(state).items()}, out / "model.safetensors")
    hf = json.loads((hf_folder / "config.json").read_text())
    text, vq = hf["text_config"], hf["vq_config"]
    config = {"model_type": "multi_modality",
              "language_config": {k: text[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                        "num_attention_heads", "num_key_value_heads", "vocab_size",
                                                        "rms_norm_eps", "rope_theta") if k in text},
              "vision_config": {"cls": "CLIPVisionTower", "params": {"image_size": IMAGE, "patch_size": IMAGE // GRID}},
              "gen_vision_config": {"cls": "VQ-16", "params": {"image_token_size": vq["num_embeddings"], "n_embed": vq["embed_dim"]}},
              "gen_aligner_config": {"cls": "MlpProjector", "params": {"depth": 2, "input_dim": vq["embed_dim"],
                                                                      "n_embed": text["hidden_size"], "projector_type": "mlp_gelu"}},
              "gen_head_config": {"cls": "vision_head", "params": {"image_token_embed": vq["projection_dim"],
                                                                  "image_token_size": vq["num_embeddings"], "n_embed": text["hidden_size"]}}}
    if "rope_parameters" in text and "rope_theta" not in config["language_config"]:
        config["language_config"]["rope_theta"] = text["rope_parameters"].get("rope_theta", 10000.0)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    AutoTokenizer.from_pretrained(str(hf_folder)).save_pretrained(out)
    (out / "chat_template.jinja").unlink(missing_ok=True)  # DeepSeek's folders carry no chat template

"""Default CPU training run: BC -> GRPO -> Entropulse -> GRPO on the simulated desktop.

Use: ``python -m jaxrl_desktop.train --config=configs/desktop_small.py --config.rl.group_size=8``.
Sized to finish in well under 30 minutes on 2 CPU cores.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.workdir = "runs/desktop_small"
    c.num_cpu_devices = 2  # simulated CPU devices (ignored on accelerators); 0 = leave JAX's default

    c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    # The policy: a small decoder; the vocabulary size is taken from the tokenizer.
    c.model = ConfigDict(dict(
        preset="", hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=32,
        intermediate_size=384, tie_embeddings=True, max_seq_len=512,
    ))
    # path: reuse a tokenizer.json. A small vocabulary splits training and held-out names into similar
    # pieces, so copying them transfers (1024: held-out 0.50 after BC; 512: 0.66).
    c.tokenizer = ConfigDict(dict(path="", vocab_size=512))
    # API-style actions need no a11y rows (max_rows=0): the instruction, the last actions and the
    # last error are the prompt. Raise max_rows for GUI-style tasks.
    c.prompt = ConfigDict(dict(max_prompt_tokens=96, max_action_tokens=48, max_rows=0, history=3))

    c.env = ConfigDict(dict(
        servers="",  # comma-separated host:port of running servers; empty = start an embedded one
        # "" = all task families; else comma-separated family or app names. The default: the file,
        # settings and mail families a 0.6M-parameter policy can learn in minutes (three of them
        # infeasible, where fail() is right); held-out evaluation uses their held-out parameters.
        families=",".join([
            "files.create_folder", "files.delete_file", "files.rename_file", "files.delete_missing",
            "settings.set_volume", "settings.theme_font", "settings.device_setup",
            "settings.font_out_of_range", "mail.send_note", "mail.reply", "mail.reply_missing",
        ]),
        workers=2, token="", max_episode_steps=6,
        timeout_s=120.0,  # deadline of each env step / reset (a hung env is cut, its episode left out)
        # the embedded server's backend, its keyword arguments (JSON) and modules (dotted names or .py
        # paths) that register more backends (fault-injection tests use one)
        backend="sim", backend_kwargs="{}", backend_modules="",
    ))

    c.optim = ConfigDict(dict(weight_decay=0.01, clip_norm=1.0, b2=0.98))

    c.bc = ConfigDict(dict(
        episodes=8192, steps=1000, batch_size=64, lr=2e-3, warmup=50, log_every=25,
        copy_fraction=0.3,  # share of synthetic copy drills in the BC data (see Trainer.copy_examples)
        copy_warmup_steps=400,  # steps on copy drills alone (short rows) before behaviour cloning
        copy_prompt_tokens=48,  # prompt length of those warm-up rows
    ))
    c.rl = ConfigDict(dict(
        phases=2,  # RL phases (an Entropulse SFT phase runs between consecutive ones)
        iters=24,  # iterations per RL phase at most
        # task values RL explores: "novel" = train families on invented names no demonstration or
        # evaluation uses (see env_server.tasks.base); "train" = the values BC saw
        split="novel",
        # family sampling: weight ~ P(a group disagrees) from recent success (decayed counts), floored;
        # family_floor=1.0 samples families uniformly
        family_floor=0.1, family_decay=0.8,
        tasks_per_iter=24, group_size=8, epochs=1, minibatch=128,
        lr=2e-4, eps_low=0.2, eps_high=0.28, kl_coef=0.0, temperature=1.0, top_p=1.0,
        grammar_mask=True, store_size=4096,
    ))
    c.entropulse = ConfigDict(dict(
        entropy_threshold=0.04,  # mean action-token entropy below this ends an RL phase ...
        min_rl_iters=8,  # ... once the phase has run this many iterations
        steps=60, batch_size=64, lr=2e-4,
    ))
    c.eval = ConfigDict(dict(episodes=240, train_episodes=48, every=8, grammar_mask=True))
    c.checkpoint = ConfigDict(dict(sft_every=200, rl_every=2, keep=3, async_save=True))
    c.log = ConfigDict(dict(tensorboard=True, progress=True, plot=True, measure_peak=True))
    return c

"""What the study (Kim et al., 2024, arXiv 2410.01380) reported, in one place, so that notebooks
state the paper's claim next to our measurement (docs/method.md sections 2-4)."""

# OLMo-1B (16 layers, d_ff 8192): knowledge entropy falls from about 144.0 to 143.6 nats over
# pretraining (maximum 16 ln 8192 = 144.17); normalised about 0.999 to 0.996.
OLMO_1B_KE = (144.0, 143.6)
OLMO_1B_NORMALIZED = (0.999, 0.996)
OLMO_1B_STEPS = (118_000, 369_000, 554_000, 738_000)  # the checkpoints trained further in Table 1

# Where those four checkpoints are on the Hugging Face hub. The study used the original OLMo-1B run
# (Groeneveld et al., 2024), whose hub repository is allenai/OLMo-1B (loaded with hf_olmo, the
# ai2-olmo package); each checkpoint there is a branch named step{N}-tokens{T}B, T = N x 4,194,304
# tokens rounded to billions. The paper's rounded steps are these exact ones: 118k is step 117850
# (the run has no checkpoint from there to step 330000), and 738k is the final step 738020, the one the
# authors' code starts from (github.com/kaistAI/Knowledge-Entropy), not step 738000.
OLMO_1B_REPO = "allenai/OLMo-1B"
OLMO_1B_CHECKPOINT_STEPS = (117_850, 369_000, 554_000, 738_020)
OLMO_1B_REVISIONS = ("step117850-tokens494B", "step369000-tokens1548B", "step554000-tokens2324B",
                     "step738020-tokens3095B")
# The same run converted to transformers' own Olmo classes (no hf_olmo needed). Its branch names give
# slightly different token counts (step738020-tokens3094B, step369000-tokens1547B), so select the
# study's checkpoints there by step: select(hub_checkpoints(OLMO_1B_HF_REPO), steps=OLMO_1B_CHECKPOINT_STEPS).
OLMO_1B_HF_REPO = "allenai/OLMo-1B-hf"

# Continued training (section 3): peak learning rate of the baseline runs, as OLMo-1B's own pretraining peak.
CONTINUED_PEAK_LR = 4e-4

# Table 1 (baseline): acquisition and forgetting (%) for the four checkpoints above.
ACQUISITION = (25.2, 24.8, 21.4, 18.8)
FORGETTING = (10.5, 12.9, 17.0, 19.5)
PEARSON_KE_ACQUISITION = 0.94
PEARSON_KE_FORGETTING = -0.96

DECAY_CLAIM = "knowledge entropy declines steadily as pretraining advances"

# Resuscitation (section 4): on the final OLMo checkpoint, p = 0.5 with q in {0.5, 1, 2, 3};
# q >= 1 raised KE and improved acquisition and retention a little, q = 0.5 (and p = 0.9) hurt;
# no random-neuron control was run.
RESUSCITATION_RATIO = 0.5
RESUSCITATION_FACTORS = (0.5, 1.0, 2.0, 3.0)
RESUSCITATION_CLAIM = ("lifting the least-used half of the memory neurons (q >= 1) of the final checkpoint raises its KE, "
                       "and it then acquires more and forgets less than the unmodified checkpoint")

"""What the study (Kim et al., 2024, arXiv 2410.01380) reported, in one place, so that notebooks
state the paper's claim next to our measurement (docs/method.md sections 2-4)."""

# OLMo-1B (16 layers, d_ff 8192): knowledge entropy falls from about 144.0 to 143.6 nats over
# pretraining (maximum 16 ln 8192 = 144.17); normalised about 0.999 to 0.996.
OLMO_1B_KE = (144.0, 143.6)
OLMO_1B_NORMALIZED = (0.999, 0.996)
OLMO_1B_STEPS = (118_000, 369_000, 554_000, 738_000)  # the checkpoints trained further in Table 1

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

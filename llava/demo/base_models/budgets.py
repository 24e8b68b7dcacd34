"""How much compute each `--budget` of the base-model builder spends, and the recipes it follows."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Budget:
    """How much compute one `--budget` spends."""

    vocab_size: int  # BPE vocabulary (bytes and special tokens included)
    llm_args: dict  # `LlmTrainArgs` fields (max_steps / time_budget_s, batch_size, ...)
    encoder_args: dict  # `EncoderTrainArgs` fields
    llm_config: dict = field(default_factory=dict)  # overrides of `default_llm_config`
    encoder_config: dict = field(default_factory=dict)  # overrides of `default_encoder_config`
    chat_copies: int = 2  # conversations per task item (each with a random instruction and layout)
    plain_lines: int = 3000  # plain LM lines mixed in (BOS text EOS: the mixed-NWP format)
    scrambled: int = 0  # word-shuffled repeat items per sentence (pure copying; see chats.scrambled_items)
    # Extra conversations per item of a task on top of `chat_copies` (e.g. {"SQA": 2}: answering from a
    # passage is learned later than copying or translating, so it gets more of the steps).
    task_copies: dict = field(default_factory=dict)
    # Share of conversations whose input words are repeated 1..stretch_max times (chats.stretched): the
    # LLM learns to read input at the projector's rate (~12 positions per second of speech).
    stretch_frac: float = 0.0
    stretch_max: int = 3
    # Repeat items per distinct sentence of the SQA passages (chats.passage_sentence_items), in the first
    # phase and in the later phases' rehearsal: 0 = none (the shipped recipe).
    passage_sentences: int = 0
    passage_openings_only: bool = False  # only each passage's first sentence (chats.passage_sentence_items)
    # A second LLM phase (0 steps: none) continuing the first on spelled inputs (chats.spelled): every
    # ASR/ST item spelled `spell_copies` times, mixed with one conversation per first-phase item (so the
    # first phase's skills are rehearsed); `spell_args` override the first phase's LlmTrainArgs.
    spell_steps: int = 0
    spell_args: dict = field(default_factory=dict)
    spell_copies: int = 2
    spell_repeat: float = 0.3  # chance of doubling each spelled letter (chats.spelled)
    # A third LLM phase (0 steps: none) continuing the previous one with the SQA passages spelled too,
    # `passage_copies` times each, beside the spelled ASR/ST items and the rehearsal of the spelled
    # phase; `passage_args` override its LlmTrainArgs. A passage read at the projector's rate (~25
    # positions per second of speech, ~270 positions) is longer than the first phases' blocks, so this
    # phase wants a longer `block_size`.
    passage_steps: int = 0
    passage_args: dict = field(default_factory=dict)
    passage_copies: int = 4
    encoder_max_train: int | None = None  # training utterances used (None: all)
    max_dev: int = 200  # dev utterances scored for CER
    topline_n: int | None = None  # items per task in the text topline (None: the whole split)
    eval_n: int = 40  # items per task in the topline logged during LLM training (every llm eval_every)

    @property
    def deterministic(self) -> bool:
        """Counted in steps, not seconds: the same on every run."""
        return not self.llm_args.get("time_budget_s") and not self.encoder_args.get("time_budget_s")


_TINY_LLM = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        vocab_size=600,
        llm_args=dict(time_budget_s=None, max_steps=6, batch_size=4, block_size=64),
        encoder_args=dict(time_budget_s=None, max_steps=6, batch_seconds=4.0),
        llm_config=dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64),
        encoder_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(16, 16, 32),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        ),
        chat_copies=1,
        plain_lines=50,
        encoder_max_train=40,
        max_dev=8,
        topline_n=4,
        spell_steps=2,  # the three-phase LLM recipe, as `ship` runs it
        passage_steps=2,
        passage_args=dict(block_size=96),
    ),
    # Built inside a study run: a few minutes, not competent (the shipped models are).
    "small": Budget(
        vocab_size=2000,
        llm_args=dict(time_budget_s=120.0, lr=5e-3, block_size=256),
        encoder_args=dict(time_budget_s=300.0),
        llm_config=dict(_TINY_LLM, intermediate_size=512),
        topline_n=40,
    ),
    # The shipped base models (llava/demo/assets): reproducible bit for bit. The LLM recipe, by
    # measurement (test-split text topline: repeat WER / BLEU / SQA F1): 700 steps of window-packed
    # chats 58.7 / 7.6 / 11.7; 3,000 steps of whole-example packing with SQA items tripled 0.1 / 82.4 /
    # 50.8, but it copies a slowed-down input literally ("the the cat cat"); stretched inputs (60 % of
    # the conversations, chats.stretched) teach it to read at the projector's rate, and copying switches
    # on earlier (repeat WER 9 % at step 1,350; 63 % at step 1,200 without). Repeat items of each SQA
    # passage's opening sentence (`passage_sentences=1, passage_openings_only=True`) remove the one
    # test reply that runs on (text topline 0.1 / 92.3 / 72.1) but the study's speech tasks come out
    # worse through that LLM (asr: WER ~30-35, BLEU ~31 per seed): not shipped (docs/demo/investigation.md).
    "ship": Budget(
        vocab_size=2000,
        llm_args=dict(time_budget_s=None, max_steps=2700, lr=5e-3, block_size=256, batch_size=16,
                      packing="whole", decay_frac=0.3, prompt_loss_weight=0.25, eval_every=450,
                      checkpoint_every=100),
        encoder_args=dict(time_budget_s=None, max_steps=3600, eval_every=400),
        llm_config=dict(_TINY_LLM, intermediate_size=512),
        chat_copies=2,
        scrambled=1,
        task_copies={"SQA": 2},
        stretch_frac=0.6,
        stretch_max=3,
        # Then 1,600 steps reading spelled inputs (chats.spelled), the form in which a projector can
        # pass on what the character-CTC encoder hears (projector probe, dev NLL of the transcripts
        # after 800 steps: 2.44 through the word-reading LLM, 1.34 through one taught to read letters).
        spell_steps=1600,
        spell_args=dict(lr=2e-3, warmup_frac=0.02, eval_every=400),
        spell_copies=2,
        spell_repeat=0.3,
    ),
}  # fmt: skip

"""The CI sample of the census: the families users train most, the MoE ones (router losses), those that
transform their logits (soft-capping, logit scales), the seq2seq and speech classes users fine-tune."""

SAMPLE = (
    # decoder-only, plain
    "GPT2LMHeadModel",
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MistralForCausalLM",
    "Phi3ForCausalLM",
    "GPTNeoXForCausalLM",
    "OPTForCausalLM",
    "FalconForCausalLM",
    "BloomForCausalLM",
    # MoE: router auxiliary losses (and z-loss) the model adds to its token loss
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
    "OlmoeForCausalLM",
    "Qwen3MoeForCausalLM",
    "JetMoeForCausalLM",
    "GraniteMoeForCausalLM",
    "PhimoeForCausalLM",
    "DeepseekV3ForCausalLM",
    "Glm4MoeForCausalLM",
    # logit transforms after the output layer
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "CohereForCausalLM",
    "GraniteForCausalLM",
    # encoder-decoders and speech
    "BartForConditionalGeneration",
    "MarianMTModel",
    "MBartForConditionalGeneration",
    "PegasusForConditionalGeneration",
    "T5ForConditionalGeneration",
    "SwitchTransformersForConditionalGeneration",
    "NllbMoeForConditionalGeneration",
    "T5GemmaForConditionalGeneration",
    "WhisperForConditionalGeneration",
)

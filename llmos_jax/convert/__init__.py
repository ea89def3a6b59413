"""Hugging Face weights in and out of llmos_jax models.

A Hugging Face model directory holds ``config.json`` and ``model.safetensors``
(or shards listed in ``model.safetensors.index.json``). Conversion reads and
writes those files with the ``safetensors`` numpy API, so neither PyTorch nor
transformers is needed (install ``llmos_jax[reference]``).

- ``hf_checkpoint``: reading and writing the directory (config + tensors).
- ``tensor_mapping``: the table engine (HF tensor names <-> our parameter
  paths, per-layer expansion, stacked ``scan_layers`` parameters, and the
  missing / unexpected / wrong-shape errors).
- ``gpt2``: the GPT-2 family (``GPT2LMHeadModel``) <-> ``DecoderLM``.
- ``bert``: ``BertModel`` / ``BertForPreTraining`` <-> ``Encoder`` / ``EncoderForPreTraining``.
- ``t5``: ``T5ForConditionalGeneration`` (v1.0, v1.1) <-> ``EncoderDecoderLM``.
- ``llama``: ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``,
  ``GemmaForCausalLM`` <-> ``DecoderLM``.
- ``peft_lora`` / ``peft_layouts``: LoRA adapters <-> Hugging Face PEFT folders
  (GPT-2, Llama-style, BERT, T5), the module names read from the tables above.
- ``streaming_load``: a checkpoint onto the devices one tensor at a time
  (shard by shard, each placed on its sharding; used by ``llama``), never
  holding a second copy of the model on the host.
- ``model_params``: shared plumbing between NNX models and flat parameter tables.
- ``hf_models``: ``CONVERTERS`` (each ``model_type`` with its model family),
  ``import_hf_model`` / ``export_hf_model``, dispatching on
  ``config.json``'s ``model_type``.
"""

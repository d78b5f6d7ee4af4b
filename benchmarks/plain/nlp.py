"""A plain question-answering program: what a user would write without e2ebench.

    python benchmarks/plain/nlp.py --work-list WORK.json --batch-size 4 --threads 2 [--variant full|tiny]

Everything runs on the main thread: one positioned read of the question's paragraph object from the SQuAD file
-> JSON parse, WordPiece tokenisation and SQuAD windows (max_seq_length tokens, doc_stride apart, padded) ->
all windows of the batch's questions concatenated -> ``BertForQuestionAnswering`` (transformers, the
bert-large-uncased shape, seeded random weights) under ``torch.inference_mode`` -> per question, the n-best
start/end search over its windows, mapped back to the paragraph's text.  No LoadGen, no e2ebench worker, no
phase clocks beyond four sums, no cgroups; the thread count is set the way a user would
(``torch.set_num_threads``, and ``RAYON_NUM_THREADS`` for the tokenizers library, as the e2ebench app's
``load`` does).

Shared with e2ebench (so that the work per request is the same): the model configuration per variant
(``MODEL_CONFIGS``, ``ATTENTION_IMPLEMENTATION``) with weights drawn after ``torch.manual_seed(seed)``, the
tokenizer (``build_tokenizer``), the SQuAD window builder (``FeatureBuilder``), the paragraph parser
(``squad.parse_question``) and the answer search (``best_answer_span``).  The app's option table
(``QuestionAnswering.options``, a class attribute) gives the defaults of the work list's "options".  Not
shared: the app instance and its methods; what they do is written out below (the model is built as the app's
``build_model`` builds it; read = ``os.pread`` of the paragraph's byte range, the whole file when the locator
has none; collate = the windows concatenated; infer = the model on all windows of the batch in one call, logits
copied to numpy; postprocess = the app's answer dict).  Bad inputs are not caught (e2ebench counts them as
failed requests).

The work list (``benchmarks/plain/worklist.py``) names the questions in the order LoadGen issues them in an
e2ebench run of the same scenario, so both programs do the same work.  The warm-up batch of the list runs first
through all phases; then the timed loop.  Prints one JSON object: ``wall_s`` (first read to last answer),
``throughput_sps``, ``phases_s`` {io, pre, infer, post}, ``windows`` (model inputs of the timed loop);
``--print-answers`` adds every answer (for checks).
"""

from __future__ import annotations

import json
import os

from loop import parse_arguments, work_options, report, run_batches  # benchmarks/plain/loop.py: the shared timed loop


def main() -> None:
    args, work, variant = parse_arguments(__doc__.split("\n\n")[0], default_batch_size=4)

    # offline, quiet transformers; the tokenizers' thread pool sized before its first use
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)

    import numpy as np
    import torch
    from transformers import BertConfig, BertForQuestionAnswering
    from transformers.utils import logging as hf_logging

    from e2ebench.apps.question_answering import (ATTENTION_IMPLEMENTATION, MODEL_CONFIGS, FeatureBuilder,
                                                  QuestionAnswering, best_answer_span, build_tokenizer)
    from e2ebench.datasets.squad import parse_question

    options = work_options(work, "nlp", QuestionAnswering.options)
    n_best = int(options["n_best"])
    max_answer_length = int(options["max_answer_length"])

    torch.set_num_threads(args.threads)
    tokenizer = build_tokenizer(options["vocab"], MODEL_CONFIGS[variant]["vocab_size"])
    builder = FeatureBuilder(tokenizer, max_seq_length=int(options["max_seq_length"]),
                             doc_stride=int(options["doc_stride"]), max_query_length=int(options["max_query_length"]))
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(int(options["seed"]))
    model = BertForQuestionAnswering(BertConfig(**MODEL_CONFIGS[variant],
                                                attn_implementation=ATTENTION_IMPLEMENTATION)).eval()

    def read(item: dict) -> bytes:
        question_id, offset, length, question_index = item["locator"]
        with open(item["path"], "rb") as f:
            if offset is None:
                return f.read()
            return os.pread(f.fileno(), length, offset)

    def preprocess(item: dict, raw: bytes):
        question_id, offset, length, question_index = item["locator"]
        question = parse_question(raw, question_id, question_index)
        return builder.build(question.question_id, question.question, question.context)

    def collate(features: list):
        return (torch.from_numpy(np.concatenate([f.input_ids for f in features])),
                torch.from_numpy(np.concatenate([f.token_type_ids for f in features])),
                torch.from_numpy(np.concatenate([f.attention_mask for f in features])),
                np.repeat(np.arange(len(features)), [f.window_count for f in features]))

    def infer(input_ids, token_type_ids, attention_mask):
        with torch.inference_mode():
            output = model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
            return output.start_logits.float().cpu().numpy(), output.end_logits.float().cpu().numpy()

    def postprocess(features: list, window_request: np.ndarray, start_logits, end_logits) -> list[dict]:
        answers = []
        for position, f in enumerate(features):
            rows = np.flatnonzero(window_request == position)
            span = best_answer_span(f, start_logits[rows], end_logits[rows], n_best=n_best,
                                    max_answer_length=max_answer_length)
            answers.append({"id": f.question_id, "text": span.text, "start_char": span.start_char,
                            "end_char": span.end_char, "score": span.score, "windows": f.window_count})
        return answers

    loop = run_batches(work["warmup"], work["items"], args.batch_size, read=read, preprocess=preprocess,
                       collate=collate, infer=lambda batch: infer(*batch[:3]),
                       postprocess=lambda logits, batch, features, batch_items: postprocess(features, batch[3], *logits))
    result = report("nlp", loop, len(work["items"]), args.batch_size, args.threads, variant=variant,
                    windows=sum(a["windows"] for a in loop["answers"]))
    if args.print_answers:
        result["answers"] = loop["answers"]
    print(json.dumps(result))

if __name__ == "__main__":
    main()

"""A plain speech-recognition program: what a user would write without e2ebench.

    python benchmarks/plain/sr.py --work-list WORK.json --batch-size 4 --threads 2 [--variant full|tiny]

Everything runs on the main thread: read the WAV/FLAC bytes -> decode (libsndfile), resample to 16 kHz when
needed, MLPerf's log-mel features -> zero-pad the batch to its longest utterance (time-major) -> the RNN-T
encoder over the batch and greedy transducer decoding of each utterance up to its own length -> symbol ids to
a transcript.  No LoadGen, no e2ebench worker, no phase clocks beyond four sums, no cgroups; the thread count
is set the way a user would (``torch.set_num_threads``, and numpy's BLAS limited to the same count with
threadpoolctl, as the e2ebench app's ``load`` does for the mel-filterbank product).

Shared with e2ebench (so that the work per request is the same): the model class and its seeded weights
(``build_rnnt(variant, seed)``), the decoder (``GreedyTransducerDecoder``, the per-step LSTM cell), the audio
decoder and resampler (``e2ebench.datasets.audio``), the feature extractor (``FeatureExtractor``) and the
alphabet.  The app's option table (``SpeechRecognition.options``, a class attribute) gives the defaults of the
work list's "options".  Not shared: the app instance and its read/preprocess/collate/infer/postprocess methods;
their few lines are written out below (collate: zero-padded (T_max, B, 240) tensor + lengths; infer: encoder +
``decode_batch`` under ``torch.inference_mode`` with the app's bound of symbols per frame, "auto" = 1 with the
random weights used here; postprocess: the app's answer dict).  Bad inputs are not caught (e2ebench counts them
as failed requests).

The work list (``benchmarks/plain/worklist.py``) names the files in the order LoadGen issues them in an e2ebench
run of the same scenario, so both programs do the same work.  The warm-up batch of the list runs first through
all phases; then the timed loop.  Prints one JSON object: ``wall_s`` (first read to last answer),
``throughput_sps``, ``phases_s`` {io, pre, infer, post}; ``--print-answers`` adds every answer (for checks).
"""

from __future__ import annotations

import json

from loop import parse_arguments, work_options, read_file, report, run_batches  # benchmarks/plain/loop.py: the shared timed loop


def main() -> None:
    args, work, variant = parse_arguments(__doc__.split("\n\n")[0], default_batch_size=4)

    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from e2ebench.apps.speech_recognition import (RANDOM_WEIGHTS_MAX_SYMBOLS_PER_STEP, FeatureExtractor,
                                                  SpeechRecognition)
    from e2ebench.datasets.audio import decode_audio, resample
    from e2ebench.models.rnnt import ALPHABET, GreedyTransducerDecoder, build_rnnt

    options = work_options(work, "sr", SpeechRecognition.options)
    bound = options["max_symbols_per_step"]
    max_symbols = (RANDOM_WEIGHTS_MAX_SYMBOLS_PER_STEP if bound is None or str(bound).strip().lower() == "auto"
                   else int(bound))

    torch.set_num_threads(args.threads)
    threadpool_limits(limits=args.threads, user_api="blas")     # stays in force (restored only on exit)
    model = build_rnnt(variant, seed=int(options["seed"])).to(dtype=torch.float32).eval()
    decoder = GreedyTransducerDecoder(model)
    features = FeatureExtractor()
    rate_hz = features.config.sample_rate_hz

    def preprocess(raw: bytes) -> np.ndarray:
        signal, source_hz = decode_audio(raw)
        if source_hz != rate_hz:
            signal = resample(signal, source_hz, rate_hz)
        return features(signal)

    def collate(items: list[np.ndarray]):
        lengths = [item.shape[0] for item in items]
        padded = np.zeros((max(lengths), len(items), features.config.features), dtype=np.float32)
        for b, item in enumerate(items):
            padded[: lengths[b], b] = item
        return torch.from_numpy(padded), torch.tensor(lengths, dtype=torch.int64)

    def infer(padded, lengths) -> list:
        with torch.inference_mode():
            encoded, encoded_lengths = model.encoder(padded, lengths)
            return decoder.decode_batch(encoded, encoded_lengths.cpu(), max_symbols)

    def postprocess(utterances: list) -> list[dict]:
        return [{"transcript": "".join(ALPHABET[i] for i in u.symbol_ids), "symbols": len(u.symbol_ids),
                 "encoder_frames": u.encoder_frames, "capped_frames": u.capped_frames} for u in utterances]

    loop = run_batches(work["warmup"], work["items"], args.batch_size, read=read_file,
                       preprocess=lambda item, raw: preprocess(raw), collate=collate, infer=lambda batch: infer(*batch),
                       postprocess=lambda utterances, batch, pre, batch_items: postprocess(utterances))
    result = report("sr", loop, len(work["items"]), args.batch_size, args.threads, variant=variant,
                    max_symbols_per_step=max_symbols)
    if args.print_answers:
        result["answers"] = loop["answers"]
    print(json.dumps(result))

if __name__ == "__main__":
    main()

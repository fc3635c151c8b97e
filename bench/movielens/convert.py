#!/usr/bin/python3
"""convert.py: MovieLens ratings (export.R's CSV) -> a committee dataset folder.

    /usr/bin/python3 bench/movielens/convert.py --csv DIR/movielens.csv --out FOLDER
        [--users N] [--transfer N] [--seed S] [--text-len L]

One example is one (user, movie) rating; the target is the rating (regression,
one target, in stars).  Splits, per user by time (ratings ordered by timestamp,
then by their row in the CSV): the last rating is `test`, the one before it
`valid` (the tuning holdout), the rest `train`.  A user with two ratings gives
one train and one test example, a user with one rating a train example only
(MovieLens latest-small has none: every user has at least 20 ratings).

Views (same rows in every view):
  pair         categorical [N,2]: user index, movie index (over every user and
               movie of the CSV, so a movie seen only in test has an index whose
               embedding training never moves: the cold start).
  pair_genres  categorical [N,23]: user, movie, then one 2-valued column per genre
               (19 genres, sorted by name, "(no genres listed)" none; the emb: model takes categorical columns
               only, so the multi-hot is 19 columns of cardinality 2), the release
               year in 5-year buckets (0: unknown, 1: before 1920, ..., 21: 2020 on)
               and the rating's calendar year (UTC) from 1995 (0: 1995 or before,
               ..., 22: 2017 or later).
  text         tokens [N,L] (int32, pad 0): the movie's title words (at most 10),
               its year, its genres, a separator, the user's mean rating (rounded
               to half a star) and a count bucket over their history, then the
               history: the user's TRAIN ratings with a timestamp strictly before
               this example's, most recent first, each as a rating token, up to
               3 genres and up to 3 title words, as many whole items as fit.
               The vocabulary (DIR/vocab.txt, one token a line, line i = id i) is
               built from the train split: title words, years and genres of
               movies rated in train; anything else is <unk> (id 1).
Splits `train`, `valid`, `test` have labels.npy (float32 [N]) and ids.npy (the
example's 0-based data row in the CSV).  `transfer` has no labels: --transfer
(user, movie) pairs that nobody rated, drawn with --seed (a user uniformly, a
movie uniformly among those rated in train), each at a time drawn uniformly in
the user's own range of rating times, every view built as above from that time;
its ids start at 10,000,000.

Long tail: the test rows are ordered with the long-tail examples first (movies
with fewer than 5 train ratings); DIR/movielens.json records their count as
"long_tail_test", so `student-trainer eval --max-test K` is the long-tail RMSE.
DIR/movielens.json also records the CSV's SHA-256, the counts and the options;
DIR/meta/<split>.csv the user, movie, timestamp and rating of each row (what
the leak test checks against).  The folder is built beside FOLDER and renamed
onto it, so a failed run never leaves half a folder.
"""

import argparse
import bisect
import csv
import datetime
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np

LONG_TAIL = 5  # a movie with fewer train ratings than this is long-tail
TITLE_WORDS = 10  # of the example's own movie
HISTORY_GENRES = 3
HISTORY_WORDS = 3
TRANSFER_ID_BASE = 10_000_000
PAD, UNK, SEP = 0, 1, 2
RATINGS = [i / 2 for i in range(1, 11)]  # 0.5 .. 5.0


def fail(message):
    print(f"convert.py: {message}", file=sys.stderr)
    sys.exit(1)


def title_words(title):
    return re.findall(r"[a-z0-9]+", title.lower())


def read_csv(path):
    try:
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            want = ["userId", "movieId", "title", "year", "genres", "rating", "timestamp"]
            if header != want:
                fail(f"{path}: header is {header}, expected {want} (export.R writes it)")
            rows = []
            for line, record in enumerate(reader, start=2):
                if len(record) != 7:
                    fail(f"{path}: line {line} has {len(record)} fields, expected 7")
                try:
                    user, movie = int(record[0]), int(record[1])
                    year = int(record[3]) if record[3] else 0
                    rating, stamp = float(record[5]), int(record[6])
                except ValueError as error:
                    fail(f"{path}: line {line}: {error}")
                if rating not in RATINGS:
                    fail(f"{path}: line {line}: rating {record[5]} is not one of 0.5, 1, ..., 5")
                genres = [] if record[4] in ("", "(no genres listed)") else record[4].split("|")
                rows.append((user, movie, record[2], year, genres, rating, stamp))
    except OSError as error:
        fail(f"{path}: cannot read: {error.strerror}")
    if not rows:
        fail(f"{path}: holds no ratings")
    return rows, digest


def year_bucket(year):
    if year <= 0:
        return 0
    return min(max((year - 1915) // 5, 1), 21)  # 1: < 1920, 2: 1920-24, ..., 21: 2015 on


def time_bucket(stamp):
    year = datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).year
    return min(max(year - 1995, 0), 22)


def count_bucket(count):
    for bucket, limit in enumerate((1, 5, 20, 100)):
        if count < limit:
            return bucket
    return 4


def main():
    parser = argparse.ArgumentParser(description="MovieLens CSV (export.R) -> dataset folder")
    parser.add_argument("--csv", required=True, help="export.R's movielens.csv")
    parser.add_argument("--out", required=True, help="dataset folder to write (replaced)")
    parser.add_argument("--users", type=int, default=0,
                        help="keep only the N users with the smallest ids (0: all) [0]")
    parser.add_argument("--transfer", type=int, default=20000,
                        help="unrated (user, movie) pairs in the transfer split [20000]")
    parser.add_argument("--seed", type=int, default=1, help="seed of the transfer sample [1]")
    parser.add_argument("--text-len", type=int, default=48,
                        help="tokens per example in the text view [48]")
    options = parser.parse_args()
    if options.users < 0:
        parser.error(f"--users {options.users}: must be 0 or more")
    if options.transfer < 0:
        parser.error(f"--transfer {options.transfer}: must be 0 or more")
    if options.text_len < 24:
        parser.error(f"--text-len {options.text_len}: must be at least 24")

    rows, digest = read_csv(options.csv)
    if options.users:
        keep = set(sorted({row[0] for row in rows})[: options.users])
        index = [i for i, row in enumerate(rows) if row[0] in keep]
    else:
        index = list(range(len(rows)))

    users = sorted({rows[i][0] for i in index})
    movies = sorted({rows[i][1] for i in index})
    user_index = {user: k for k, user in enumerate(users)}
    movie_index = {movie: k for k, movie in enumerate(movies)}
    movie_info = {}
    for i in index:
        movie_info.setdefault(rows[i][1], (rows[i][2], rows[i][3], rows[i][4]))
    genre_names = sorted({g for _, _, genres in movie_info.values() for g in genres})
    genre_column = {g: k for k, g in enumerate(genre_names)}

    # The split of every rating, per user by (timestamp, row).
    by_user = {}
    for i in index:
        by_user.setdefault(rows[i][0], []).append(i)
    split_of = {}
    for user, ratings in by_user.items():
        ratings.sort(key=lambda i: (rows[i][6], i))
        for position, i in enumerate(ratings):
            back = len(ratings) - position
            if len(ratings) >= 3:
                split_of[i] = {1: "test", 2: "valid"}.get(back, "train")
            elif len(ratings) == 2:
                split_of[i] = "test" if back == 1 else "train"
            else:
                split_of[i] = "train"

    # Train history per user, ordered by (timestamp, row), with prefix sums of ratings.
    history = {}
    for user, ratings in by_user.items():
        train = [i for i in ratings if split_of[i] == "train"]
        stamps = [rows[i][6] for i in train]
        sums = np.concatenate([[0.0], np.cumsum([rows[i][5] for i in train])])
        history[user] = (train, stamps, sums)
    train_count = {}
    for i in index:
        if split_of[i] == "train":
            train_count[rows[i][1]] = train_count.get(rows[i][1], 0) + 1

    # The vocabulary, from the train split.
    vocab = ["<pad>", "<unk>", "<sep>"]
    vocab += [f"rating:{r:.1f}" for r in RATINGS]
    vocab += [f"mean:{r:.1f}" for r in RATINGS] + ["mean:none"]
    vocab += [f"count:{b}" for b in range(5)]
    train_movies = sorted(train_count)
    vocab += [f"genre:{g}" for g in sorted({g for m in train_movies for g in movie_info[m][2]})]
    vocab += [f"year:{y}" for y in sorted({movie_info[m][1] for m in train_movies} - {0})]
    vocab += [f"word:{w}" for w in sorted({w for m in train_movies
                                           for w in title_words(movie_info[m][0])})]
    token = {name: k for k, name in enumerate(vocab)}

    def tok(name):
        return token.get(name, UNK)

    def movie_tokens(movie, words, genres):
        title, year, genre_list = movie_info[movie]
        out = [tok(f"word:{w}") for w in title_words(title)[:words]]
        if year:
            out.append(tok(f"year:{year}"))
        return out + [tok(f"genre:{g}") for g in genre_list[:genres]]

    length = options.text_len

    def text_row(user, movie, stamp):
        out = movie_tokens(movie, TITLE_WORDS, len(genre_names))[: length // 2]
        train, stamps, sums = history[user]
        seen = bisect.bisect_left(stamps, stamp)  # train ratings strictly before `stamp`
        mean = "none" if seen == 0 else f"{round(2 * sums[seen] / seen) / 2:.1f}"
        out += [SEP, tok(f"mean:{mean}"), tok(f"count:{count_bucket(seen)}")]
        for k in range(seen - 1, -1, -1):
            i = train[k]
            item = [tok(f"rating:{rows[i][5]:.1f}")]
            item += movie_tokens(rows[i][1], HISTORY_WORDS, HISTORY_GENRES)
            if len(out) + len(item) > length:
                break
            out += item
        return out + [PAD] * (length - len(out))

    def pair_genres_row(user, movie, stamp):
        title, year, genre_list = movie_info[movie]
        hot = [0] * len(genre_names)
        for g in genre_list:
            hot[genre_column[g]] = 1
        return [user_index[user], movie_index[movie]] + hot + [year_bucket(year),
                                                                time_bucket(stamp)]

    # The examples of each split: (id, user, movie, stamp, rating or None).
    examples = {"train": [], "valid": [], "test": []}
    for i in index:
        examples[split_of[i]].append((i, rows[i][0], rows[i][1], rows[i][6], rows[i][5]))
    # Long-tail test examples first, then the rest, each by user.
    examples["test"].sort(key=lambda e: (train_count.get(e[2], 0) >= LONG_TAIL, e[1], e[0]))
    long_tail_test = sum(1 for e in examples["test"] if train_count.get(e[2], 0) < LONG_TAIL)

    rng = np.random.default_rng(options.seed)
    rated = {(rows[i][0], rows[i][1]) for i in index}
    train_set = set(train_movies)
    available = len(users) * len(train_movies) - sum(1 for _, m in rated if m in train_set)
    if options.transfer > available:
        fail(f"--transfer {options.transfer}: only {available} unrated (user, movie) pairs "
             "with a movie rated in train exist")
    examples["transfer"] = []
    chosen = set()
    while len(examples["transfer"]) < options.transfer:
        user = users[int(rng.integers(len(users)))]
        movie = train_movies[int(rng.integers(len(train_movies)))]
        if (user, movie) in rated or (user, movie) in chosen:
            continue
        chosen.add((user, movie))
        ratings = by_user[user]
        low, high = rows[ratings[0]][6], rows[ratings[-1]][6]
        stamp = int(rng.integers(low, high + 1))
        examples["transfer"].append((TRANSFER_ID_BASE + len(examples["transfer"]), user, movie,
                                     stamp, None))

    out_dir = os.path.abspath(options.out)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    temp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    try:
        os.makedirs(os.path.join(temp, "meta"))
        for split, items in examples.items():
            os.makedirs(os.path.join(temp, split))
            n = len(items)
            ids = np.array([e[0] for e in items], dtype=np.int64).reshape(n)
            pair = np.array([[user_index[e[1]], movie_index[e[2]]] for e in items],
                            dtype=np.int32).reshape(n, 2)
            pair_genres = np.array([pair_genres_row(e[1], e[2], e[3]) for e in items],
                                   dtype=np.int32).reshape(n, 4 + len(genre_names))
            text = np.array([text_row(e[1], e[2], e[3]) for e in items],
                            dtype=np.int32).reshape(n, length)
            np.save(os.path.join(temp, split, "ids.npy"), ids)
            np.save(os.path.join(temp, split, "pair.npy"), pair)
            np.save(os.path.join(temp, split, "pair_genres.npy"), pair_genres)
            np.save(os.path.join(temp, split, "text.npy"), text)
            if split != "transfer":
                labels = np.array([e[4] for e in items], dtype=np.float32).reshape(n)
                np.save(os.path.join(temp, split, "labels.npy"), labels)
            with open(os.path.join(temp, "meta", f"{split}.csv"), "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["id", "userId", "movieId", "timestamp", "rating", "long_tail"])
                for e in items:
                    writer.writerow([e[0], e[1], e[2], e[3], "" if e[4] is None else e[4],
                                     int(train_count.get(e[2], 0) < LONG_TAIL)])
        with open(os.path.join(temp, "vocab.txt"), "w", encoding="utf-8") as handle:
            handle.write("".join(f"{name}\n" for name in vocab))
        cards_pair = [len(users), len(movies)]
        manifest = {
            "format": "committee-dataset/1",
            "name": "movielens-small" + (f"-{options.users}u" if options.users else ""),
            "task": {"type": "regression", "targets": 1},
            "splits": ["train", "test", "valid", "transfer"],
            "views": {
                "pair": {"kind": "categorical", "cardinality": cards_pair},
                "pair_genres": {"kind": "categorical",
                                "cardinality": cards_pair + [2] * len(genre_names) + [22, 23]},
                "text": {"kind": "tokens", "vocab": len(vocab), "pad": PAD},
            },
        }
        with open(os.path.join(temp, "dataset.json"), "w") as handle:
            json.dump(manifest, handle, indent=1)
            handle.write("\n")
        info = {
            "source_sha256": digest,
            "users": len(users), "movies": len(movies), "genres": genre_names,
            "ratings": len(index),
            "counts": {split: len(items) for split, items in examples.items()},
            "long_tail_test": long_tail_test, "long_tail_below": LONG_TAIL,
            "vocab": len(vocab), "text_len": length,
            "options": {"users": options.users, "transfer": options.transfer,
                        "seed": options.seed},
        }
        with open(os.path.join(temp, "movielens.json"), "w") as handle:
            json.dump(info, handle, indent=1)
            handle.write("\n")
        for directory, _, files in os.walk(temp):
            for name in files:
                with open(os.path.join(directory, name), "rb+") as handle:
                    os.fsync(handle.fileno())
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=".convert-old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "folder"))
        os.rename(temp, out_dir)
        if old:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    print(f"convert.py: {len(index)} ratings of {len(users)} users -> {out_dir}: "
          + ", ".join(f"{split} {len(items)}" for split, items in examples.items())
          + f"; long-tail test {long_tail_test}; vocab {len(vocab)}")


if __name__ == "__main__":
    main()

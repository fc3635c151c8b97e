/*
 * fake_teacher: a misbehaving teacher for tests of student-trainer, in a
 * thread of the test process.
 *
 * It binds a ROUTER socket (its own ZeroMQ context, used only by its
 * thread) at an endpoint the test chooses and speaks just enough of the
 * protocol for a trainer: it answers every Hello with a teacher Hello for
 * the dataset fingerprint it was given (10 classes, one output "logits"
 * [10], view pool7, no heads), ignores heartbeats and Byes, and answers
 * BatchRequests as its mode says.  Normal answers are F32 logits that
 * depend only on the example id (class id % 10 gets 4, the others 0), so a
 * student learns something from them and two runs see the same values.
 * Only F32 requests are supported (the trainer's default).
 *
 * The real teacher-server is never taught these behaviours: this is where
 * tests get a teacher that lies.
 */
#ifndef FAKE_TEACHER_H
#define FAKE_TEACHER_H

typedef enum {
    FAKE_TEACHER_NORMAL,          /* every request answered correctly */
    FAKE_TEACHER_BUSY,            /* every request answered Error{BUSY} */
    FAKE_TEACHER_NAN,             /* every reply holds a NaN (row 0, class 3) and an Inf */
    FAKE_TEACHER_GARBAGE_ONCE,    /* the first request gets an undecodable frame, others normal */
    FAKE_TEACHER_SHORT_ROWS_ONCE, /* the first reply has rows of 9 floats, others normal */
    FAKE_TEACHER_UNKNOWN_ID_ONCE, /* the first reply answers an id never sent, others normal */
    FAKE_TEACHER_GARBAGE,         /* every request answered with an undecodable frame */
    FAKE_TEACHER_SILENT_AFTER,    /* the first `normal_requests` answered, the rest never */
    FAKE_TEACHER_MUTE             /* nothing is ever answered, not even Hello */
} fake_teacher_mode_t;

typedef struct fake_teacher fake_teacher_t;

/*
 * Starts the teacher `name` on `endpoint` (e.g. ipc://DIR/fake.sock) for the dataset
 * `fingerprint` (64 hex digits, copied).  `normal_requests` is used by
 * FAKE_TEACHER_SILENT_AFTER.  Returns NULL if the socket cannot be bound or the thread not
 * started.
 */
fake_teacher_t *fake_teacher_start(const char *endpoint, const char *name, const char *fingerprint,
                                   fake_teacher_mode_t mode, int normal_requests);

/* BatchRequests and Hellos received so far (read from any thread). */
int fake_teacher_requests(fake_teacher_t *teacher);
int fake_teacher_hellos(fake_teacher_t *teacher);

/* Stops the thread, closes the socket and frees; NULL-safe, sets *teacher to NULL. */
void fake_teacher_stop(fake_teacher_t **teacher);

#endif

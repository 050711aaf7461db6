//! Cross-user isolation, property-based: random sequences of create / get / list / update /
//! toggle / delete by several users, through both path styles, with ids that are theirs, other
//! users', deleted, or guessed, and listings filtered by priority, tag and search. After every
//! step the response and the acting user's whole view are checked against an in-memory model;
//! every few steps, every user's view is.

use std::collections::BTreeMap;

use client_sdk::{
    Client,
    types::{Priority, Task, TaskCreate, TaskStatus, TaskUpdate, TaskUpdateTitle},
};
use integration_tests::{Backend, TestServer, user};
use proptest::{prelude::*, test_runner::TestRunner};

const USERS: usize = 3;
const PRIORITIES: [Priority; 4] =
    [Priority::Low, Priority::Medium, Priority::High, Priority::Urgent];
const TAGS: [&str; 3] = ["home", "work", "x"];
const CASES: u32 = 20;
const STEPS: usize = 500;
// The budget the README and the closing notes promise: at least 10,000 operations a database.
const _: () = assert!(CASES as usize * STEPS >= 10_000, "fewer than 10,000 operations");

#[derive(Debug, Clone, Copy)]
enum Style {
    Plain,
    UserPath,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    /// One of the ids created so far (anyone's, deleted or not).
    Known(usize),
    /// An id past the newest one.
    Guess(i64),
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        user: usize,
        style: Style,
        title: String,
        completed: bool,
        priority: usize,
        tags: Vec<usize>,
    },
    Get {
        user: usize,
        style: Style,
        target: Target,
    },
    List {
        user: usize,
        style: Style,
        status: Option<bool>,
    },
    /// A listing filtered by priority, tag and a one-letter search, each maybe.
    Filter {
        user: usize,
        style: Style,
        priority: Option<usize>,
        tag: Option<usize>,
        search: Option<char>,
    },
    Update {
        user: usize,
        style: Style,
        target: Target,
        title: Option<String>,
        completed: Option<bool>,
        priority: Option<usize>,
        tags: Option<Vec<usize>>,
    },
    Toggle {
        user: usize,
        style: Style,
        target: Target,
    },
    Delete {
        user: usize,
        style: Style,
        target: Target,
    },
    /// A request on another user's path: always 403.
    ForeignPath {
        user: usize,
        other: usize,
        target: Target,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct ModelTask {
    owner: usize,
    title: String,
    completed: bool,
    priority: Priority,
    tags: Vec<String>,
}

impl ModelTask {
    fn matches(&self, priority: Option<usize>, tag: Option<usize>, search: Option<char>) -> bool {
        priority.is_none_or(|p| self.priority == PRIORITIES[p])
            && tag.is_none_or(|t| self.tags.iter().any(|tag| tag == TAGS[t]))
            && search.is_none_or(|c| self.title.to_lowercase().contains(c))
    }
}

/// Tag names from indexes, each once, in order.
fn tag_names(indexes: &[usize]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for &index in indexes {
        if !names.iter().any(|name| name == TAGS[index]) {
            names.push(TAGS[index].to_owned());
        }
    }
    names
}

fn tags() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0..TAGS.len(), 0..3)
}

fn style() -> impl Strategy<Value = Style> {
    prop_oneof![Just(Style::Plain), Just(Style::UserPath)]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![4 => any::<usize>().prop_map(Target::Known), 1 => (1i64..50).prop_map(Target::Guess)]
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS;
    let title = "[a-zA-Z0-9 ]{0,12}[a-z]";
    prop_oneof![
        3 => (user.clone(), style(), title, any::<bool>(), 0..PRIORITIES.len(), tags())
            .prop_map(|(user, style, title, completed, priority, tags)| Op::Create { user, style, title, completed, priority, tags }),
        2 => (user.clone(), style(), target()).prop_map(|(user, style, target)| Op::Get { user, style, target }),
        1 => (user.clone(), style(), proptest::option::of(any::<bool>()))
            .prop_map(|(user, style, status)| Op::List { user, style, status }),
        1 => (user.clone(), style(), proptest::option::of(0..PRIORITIES.len()), proptest::option::of(0..TAGS.len()), proptest::option::of(proptest::char::range('a', 'e')))
            .prop_map(|(user, style, priority, tag, search)| Op::Filter { user, style, priority, tag, search }),
        2 => (user.clone(), style(), target(), proptest::option::of(title), proptest::option::of(any::<bool>()), proptest::option::of(0..PRIORITIES.len()), proptest::option::of(tags()))
            .prop_map(|(user, style, target, title, completed, priority, tags)| Op::Update { user, style, target, title, completed, priority, tags }),
        2 => (user.clone(), style(), target()).prop_map(|(user, style, target)| Op::Toggle { user, style, target }),
        1 => (user.clone(), style(), target()).prop_map(|(user, style, target)| Op::Delete { user, style, target }),
        1 => (user.clone(), 1..USERS, target())
            .prop_map(|(user, offset, target)| Op::ForeignPath { user, other: (user + offset) % USERS, target }),
    ]
}

struct World {
    names: Vec<String>,
    clients: Vec<Client>,
    model: BTreeMap<i64, ModelTask>,
    /// Every id ever created in this case, in order.
    created: Vec<i64>,
    /// The largest id seen anywhere so far (guesses go past it).
    newest: i64,
}

impl World {
    fn resolve(&self, target: Target) -> i64 {
        match target {
            Target::Known(i) if !self.created.is_empty() => self.created[i % self.created.len()],
            Target::Known(_) => self.newest + 1,
            Target::Guess(ahead) => self.newest + ahead,
        }
    }

    fn owns(&self, user: usize, id: i64) -> bool {
        self.model.get(&id).is_some_and(|task| task.owner == user)
    }

    fn expect_task(&self, user: usize, id: i64, task: &Task) -> Result<(), TestCaseError> {
        let model = &self.model[&id];
        prop_assert_eq!(task.id, id);
        prop_assert_eq!(&task.user_id, &self.names[user]);
        prop_assert_eq!(&task.title, &model.title);
        prop_assert_eq!(task.completed, model.completed);
        prop_assert_eq!(task.priority, model.priority);
        prop_assert_eq!(&task.tags, &model.tags);
        Ok(())
    }

    /// The user's list equals their model, in creation order.
    async fn check_view(&self, user: usize) -> Result<(), TestCaseError> {
        let listed = self.clients[user].list_tasks().send().await.unwrap().into_inner();
        type View<'a> = (i64, &'a str, bool, Priority, &'a [String]);
        let expected: Vec<View> = self
            .model
            .iter()
            .filter(|(_, task)| task.owner == user)
            .map(|(id, t)| (*id, t.title.as_str(), t.completed, t.priority, t.tags.as_slice()))
            .collect();
        let actual: Vec<View> = listed
            .iter()
            .map(|t| (t.id, t.title.as_str(), t.completed, t.priority, t.tags.as_slice()))
            .collect();
        prop_assert_eq!(actual, expected, "view of user {}", user);
        prop_assert!(listed.iter().all(|task| task.user_id == self.names[user]));
        Ok(())
    }

    async fn apply(&mut self, op: &Op) -> Result<usize, TestCaseError> {
        type Reply =
            Result<client_sdk::ResponseValue<Task>, client_sdk::Error<client_sdk::types::Problem>>;
        // A mutation or read of `id` by `user`: 404 unless the user owns it.
        fn check_reply(
            world: &World,
            user: usize,
            id: i64,
            reply: Reply,
        ) -> Result<Option<Task>, TestCaseError> {
            match reply {
                Ok(task) => {
                    prop_assert!(
                        world.owns(user, id),
                        "user {} reached task {} they do not own",
                        user,
                        id
                    );
                    Ok(Some(task.into_inner()))
                }
                Err(client_sdk::Error::ErrorResponse(problem)) => {
                    prop_assert_eq!(problem.status, 404, "task {}", id);
                    prop_assert!(
                        !world.owns(user, id),
                        "user {} was refused their own task {}",
                        user,
                        id
                    );
                    Ok(None)
                }
                Err(other) => Err(TestCaseError::fail(format!("unexpected: {other:?}"))),
            }
        }
        let actor = match op {
            Op::Create { user, style, title, completed, priority, tags } => {
                let client = &self.clients[*user];
                let tags = tag_names(tags);
                let items = tags.iter().map(|tag| tag.parse().unwrap()).collect::<Vec<_>>();
                let body = TaskCreate::builder()
                    .title(title.clone())
                    .completed(*completed)
                    .priority(PRIORITIES[*priority])
                    .tags(Some(items));
                let reply = match style {
                    Style::Plain => client.create_task().body(body).send().await,
                    Style::UserPath => {
                        client
                            .create_user_task()
                            .user_id(&self.names[*user])
                            .body(body)
                            .send()
                            .await
                    }
                };
                let task =
                    reply.map_err(|e| TestCaseError::fail(format!("create: {e:?}")))?.into_inner();
                prop_assert!(task.id > self.newest, "ids only grow");
                prop_assert!(!self.created.contains(&task.id), "id reused");
                let (title, completed) = (title.clone(), *completed);
                let priority = PRIORITIES[*priority];
                self.model
                    .insert(task.id, ModelTask { owner: *user, title, completed, priority, tags });
                self.created.push(task.id);
                self.newest = task.id;
                self.expect_task(*user, task.id, &task)?;
                *user
            }
            Op::Get { user, style, target } => {
                let id = self.resolve(*target);
                let client = &self.clients[*user];
                let reply = match style {
                    Style::Plain => client.get_task().id(id).send().await,
                    Style::UserPath => {
                        client.get_user_task().user_id(&self.names[*user]).id(id).send().await
                    }
                };
                if let Some(task) = check_reply(self, *user, id, reply)? {
                    self.expect_task(*user, id, &task)?;
                }
                *user
            }
            Op::List { user, style, status } => {
                let client = &self.clients[*user];
                let status_param = match status {
                    None => TaskStatus::All,
                    Some(true) => TaskStatus::Completed,
                    Some(false) => TaskStatus::Pending,
                };
                let reply = match style {
                    Style::Plain => client.list_tasks().status(status_param).send().await,
                    Style::UserPath => {
                        client
                            .list_user_tasks()
                            .user_id(&self.names[*user])
                            .status(status_param)
                            .send()
                            .await
                    }
                };
                let listed =
                    reply.map_err(|e| TestCaseError::fail(format!("list: {e:?}")))?.into_inner();
                let expected: Vec<i64> = self
                    .model
                    .iter()
                    .filter(|(_, task)| {
                        task.owner == *user && status.is_none_or(|done| task.completed == done)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                prop_assert_eq!(listed.iter().map(|task| task.id).collect::<Vec<_>>(), expected);
                *user
            }
            Op::Filter { user, style, priority, tag, search } => {
                let client = &self.clients[*user];
                let priority_name = priority.map(|p| PRIORITIES[p].to_string());
                let tag_list: Option<Vec<String>> = tag.map(|t| vec![TAGS[t].to_owned()]);
                let search_text = search.map(String::from);
                let reply = match style {
                    Style::Plain => {
                        let mut list = client.list_tasks();
                        if let Some(p) = &priority_name {
                            list = list.priority(p.clone());
                        }
                        if let Some(t) = &tag_list {
                            list = list.tag(t.clone());
                        }
                        if let Some(s) = &search_text {
                            list = list.search(s.clone());
                        }
                        list.send().await
                    }
                    Style::UserPath => {
                        let mut list = client.list_user_tasks().user_id(&self.names[*user]);
                        if let Some(p) = &priority_name {
                            list = list.priority(p.clone());
                        }
                        if let Some(t) = &tag_list {
                            list = list.tag(t.clone());
                        }
                        if let Some(s) = &search_text {
                            list = list.search(s.clone());
                        }
                        list.send().await
                    }
                };
                let listed =
                    reply.map_err(|e| TestCaseError::fail(format!("filter: {e:?}")))?.into_inner();
                let expected: Vec<i64> = self
                    .model
                    .iter()
                    .filter(|(_, task)| {
                        task.owner == *user && task.matches(*priority, *tag, *search)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                prop_assert_eq!(listed.iter().map(|task| task.id).collect::<Vec<_>>(), expected);
                prop_assert!(listed.iter().all(|task| task.user_id == self.names[*user]));
                *user
            }
            Op::Update { user, style, target, title, completed, priority, tags } => {
                let id = self.resolve(*target);
                let client = &self.clients[*user];
                let tags = tags.as_deref().map(tag_names);
                let mut body = TaskUpdate::builder();
                if let Some(priority) = priority {
                    body = body.priority(Some(PRIORITIES[*priority]));
                }
                if let Some(tags) = &tags {
                    body = body.tags(Some(
                        tags.iter().map(|tag| tag.parse().unwrap()).collect::<Vec<_>>(),
                    ));
                }
                if let Some(title) = title {
                    body = body.title(Some(title.parse::<TaskUpdateTitle>().unwrap()));
                }
                if let Some(completed) = completed {
                    body = body.completed(*completed);
                }
                let reply = match style {
                    Style::Plain => client.update_task().id(id).body(body).send().await,
                    Style::UserPath => {
                        client
                            .update_user_task()
                            .user_id(&self.names[*user])
                            .id(id)
                            .body(body)
                            .send()
                            .await
                    }
                };
                if title.is_none() && completed.is_none() && priority.is_none() && tags.is_none() {
                    // An empty update is a 422 whoever owns the task, and changes nothing.
                    let err = reply.expect_err("an empty update is refused");
                    prop_assert_eq!(err.status().map(|s| s.as_u16()), Some(422));
                } else if let Some(task) = check_reply(self, *user, id, reply)? {
                    let entry = self.model.get_mut(&id).unwrap();
                    if let Some(title) = title {
                        entry.title = title.clone();
                    }
                    if let Some(completed) = completed {
                        entry.completed = *completed;
                    }
                    if let Some(priority) = priority {
                        entry.priority = PRIORITIES[*priority];
                    }
                    if let Some(tags) = tags {
                        entry.tags = tags;
                    }
                    self.expect_task(*user, id, &task)?;
                }
                *user
            }
            Op::Toggle { user, style, target } => {
                let id = self.resolve(*target);
                let client = &self.clients[*user];
                let reply = match style {
                    Style::Plain => client.toggle_task().id(id).send().await,
                    Style::UserPath => {
                        client.toggle_user_task().user_id(&self.names[*user]).id(id).send().await
                    }
                };
                if let Some(task) = check_reply(self, *user, id, reply)? {
                    let entry = self.model.get_mut(&id).unwrap();
                    entry.completed = !entry.completed;
                    self.expect_task(*user, id, &task)?;
                }
                *user
            }
            Op::Delete { user, style, target } => {
                let id = self.resolve(*target);
                let client = &self.clients[*user];
                let reply = match style {
                    Style::Plain => client.delete_task().id(id).send().await,
                    Style::UserPath => {
                        client.delete_user_task().user_id(&self.names[*user]).id(id).send().await
                    }
                };
                match reply {
                    Ok(_) => {
                        prop_assert!(
                            self.owns(*user, id),
                            "user {} deleted task {} they do not own",
                            user,
                            id
                        );
                        self.model.remove(&id);
                    }
                    Err(err) => {
                        prop_assert_eq!(err.status().map(|s| s.as_u16()), Some(404));
                        prop_assert!(!self.owns(*user, id));
                    }
                }
                *user
            }
            Op::ForeignPath { user, other, target } => {
                let id = self.resolve(*target);
                let client = &self.clients[*user];
                let victim = &self.names[*other];
                let statuses = [
                    status(client.list_user_tasks().user_id(victim).send().await),
                    status(client.get_user_task().user_id(victim).id(id).send().await),
                    status(client.toggle_user_task().user_id(victim).id(id).send().await),
                    status(client.delete_user_task().user_id(victim).id(id).send().await),
                ];
                for status in statuses {
                    prop_assert_eq!(status, Some(403));
                }
                *other
            }
        };
        Ok(actor)
    }
}

/// The status of an error response, `None` on success.
fn status<T>(reply: Result<T, client_sdk::Error<client_sdk::types::Problem>>) -> Option<u16> {
    reply.err().and_then(|err| err.status()).map(|status| status.as_u16())
}

fn run(backend: Backend) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _context = runtime.enter();
    let server = runtime.block_on(TestServer::start(backend));
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let operations = std::sync::atomic::AtomicUsize::new(0);
    let newest = std::sync::atomic::AtomicI64::new(0);
    runner
        .run(&proptest::collection::vec(op(), STEPS), |ops| {
            runtime.block_on(async {
                // Fresh users for every case; ids keep growing across cases, which is realistic.
                let names: Vec<String> = (0..USERS).map(|i| user(&format!("iso{i}"))).collect();
                let clients = names.iter().map(|name| server.client(name)).collect();
                let mut world = World {
                    names,
                    clients,
                    model: BTreeMap::new(),
                    created: Vec::new(),
                    newest: newest.load(std::sync::atomic::Ordering::SeqCst),
                };
                for (step, op) in ops.iter().enumerate() {
                    let actor = world.apply(op).await?;
                    world.check_view(actor).await?;
                    if step % 25 == 24 {
                        for user in 0..USERS {
                            world.check_view(user).await?;
                        }
                    }
                }
                for user in 0..USERS {
                    world.check_view(user).await?;
                }
                operations.fetch_add(ops.len(), std::sync::atomic::Ordering::SeqCst);
                newest.fetch_max(world.newest, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
        })
        .unwrap();
    let operations = operations.into_inner();
    println!("{backend:?}: {operations} random operations, every view matched the model");
    // Every case ran all its steps (proptest stops early only on a failure, which panics).
    assert_eq!(operations, CASES as usize * STEPS);
}

#[test]
fn users_only_ever_see_and_change_their_own_tasks_on_sqlite() {
    run(Backend::Sqlite);
}

#[test]
fn users_only_ever_see_and_change_their_own_tasks_on_postgres() {
    run(Backend::Postgres);
}

#[test]
fn users_only_ever_see_and_change_their_own_tasks_behind_pgbouncer() {
    run(Backend::PgBouncer);
}
